# A ROMFS partition for the virtual board, for tests only. The MicroPython VM has no ROMFS
# (no vfs.rom_ioctl, no VfsRom), so this stands in for what a board's own build does in C:
# - vfs.rom_ioctl over _V2G_ROM_PARTS partitions of SIZE bytes each, kept in
#   state/fake_rom<k>.bin on the board's flash (so they survive the VM's restarts as a real
#   partition survives a reset), with flash semantics: erase (3) sets 0xFF by blocks, write (4)
#   can only clear bits; every erase and write is logged to state/fake_rom_log.txt
#   ("erase K OFF N" / "write K OFF N"), so a test can see which partition was touched;
# - vfs.VfsRom/vfs.mount of a partition "mount" it by unpacking its files into the mount point
#   on the VM's RAM filesystem (not the board's flash); at boot a partition 0 that starts with
#   the ROMFS header is mounted at /rom and /rom goes in front of sys.path, as MicroPython does
#   on a board with ROMFS;
# - a power cut inside the partition: state/fake_rom_fault.json {"step": "erase" | "write",
#   "after": N} lets N such operations through, then the supply goes: the file is removed, a
#   write puts half its bytes on flash, and from then on neither the partition nor the
#   filesystem keeps anything (the test then kills the VM: VirtualBoard.power_cut);
#   {"step": "garble", "after": N} instead has write N+1 program one byte wrong, silently.
# It is stricter than a board in one way: erasing or writing a partition while it is mounted
# is refused (-16, EBUSY), so a deploy that forgets to unmount shows up.
# The test prepends `exec(open('state/fake_rom.py').read())` to the boot.py it flashes; an
# `import boot` later in the same boot (main.py's fall_back) leaves the stand-in as it is.

_V2G_ROM_SIZE = 0x40000        # the test board's board.json "romfs" size
_V2G_ROM_BLOCK = 4096
_V2G_ROM_PARTS = 1


def _v2g_fake_romfs(size, block, nparts):
    import sys
    import os
    import builtins
    import json
    import vfs as real

    if getattr(real, 'v2g_fake', False):
        return      # boot.py imported again (main.py's fall_back): the partitions stay as they are
    header = b'\xd2\xcd\x31'
    parts = []
    for k in range(nparts):
        try:
            with open('state/fake_rom{}.bin'.format(k), 'rb') as f:
                parts.append(bytearray(f.read()))
        except OSError:
            parts.append(bytearray(b'\xff' * size))
    views = [memoryview(p) for p in parts]
    mounted = {}                     # mount point -> partition
    try:
        with open('state/fake_rom_fault.json') as f:
            fault = json.loads(f.read())
    except (OSError, ValueError):
        fault = None
    st = {'dead': False, 'ops': 0}

    def save(k):
        if st['dead']:
            return
        with open('state/fake_rom{}.bin'.format(k), 'wb') as f:
            f.write(parts[k])

    def log(line):
        if st['dead']:
            return
        with open('state/fake_rom_log.txt', 'a') as f:
            f.write(line + '\n')

    class Sink:
        def write(self, data):
            return len(data)

        def flush(self):
            pass

        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

    def cut():
        """The supply goes: nothing written from here on is kept, on either flash."""
        try:
            os.remove('state/fake_rom_fault.json')
        except OSError:
            pass
        st['dead'] = True
        real_open = builtins.open

        def dead_open(path, mode='r', *a, **k):
            if 'w' in mode or 'a' in mode or '+' in mode:
                return Sink()
            return real_open(path, mode, *a, **k)

        builtins.open = dead_open
        for name in ('rename', 'remove', 'rmdir', 'mkdir'):
            setattr(os, name, lambda *a: None)

    def faulty(step):
        if st['dead'] or not isinstance(fault, dict) or fault.get('step') != step:
            return False
        st['ops'] += 1
        return st['ops'] > fault.get('after', 0)

    def uint(b, p):
        v = 0
        while True:
            c = b[p]
            p += 1
            v = (v << 7) | (c & 0x7F)
            if not c & 0x80:
                return v, p

    def records(b, p, end, prefix, out):
        while p < end:
            kind, p = uint(b, p)
            n, p = uint(b, p)
            stop = p + n
            if kind in (4, 5):
                nl, q = uint(b, p)
                name = prefix + bytes(b[q:q + nl]).decode()
                q += nl
                if kind == 4:
                    out.append((name, None))
                    records(b, q, stop, name + '/', out)
                else:
                    _k, q = uint(b, q)
                    dn, q = uint(b, q)
                    out.append((name, bytes(b[q:q + dn])))
            p = stop
        return out

    class VfsRom:
        def __init__(self, dev):
            self.part = None
            for k in range(nparts):
                if dev is views[k]:
                    self.part = k
            b = memoryview(dev)
            if bytes(b[:3]) != header:
                raise OSError(19)        # ENODEV: not a ROMFS image
            n, p = uint(b, 3)
            self.entries = records(b, p, p + n, '', [])

    def rmtree(d):
        import os
        for e in os.ilistdir(d):
            p = d + '/' + e[0]
            if e[1] & 0x4000:
                rmtree(p)
            else:
                os.remove(p)
        os.rmdir(d)

    def mount(obj, where, *a, **k):
        if not isinstance(obj, VfsRom):
            return real.mount(obj, where, *a, **k)
        if where in mounted:
            raise OSError(1)             # EPERM: already mounted
        os.mkdir(where)
        for name, data in obj.entries:
            if data is None:
                os.mkdir(where + '/' + name)
            else:
                with open(where + '/' + name, 'wb') as f:
                    f.write(data)
        mounted[where] = obj.part

    def umount(where):
        if where in mounted:
            rmtree(where)
            del mounted[where]
            return
        if where == '/rom':
            raise OSError(22)            # EINVAL: nothing mounted there
        return real.umount(where)

    def rom_ioctl(cmd, *args):
        if cmd == 1:
            return nparts
        if not args or args[0] not in range(nparts):
            return -22
        k = args[0]
        part = parts[k]
        if cmd == 2:
            return views[k]
        if cmd == 6:
            return block
        if cmd in (3, 4) and k in mounted.values():
            return -16
        if cmd == 3:
            off, n = (0, args[1]) if len(args) == 2 else (args[1], args[2])
            if off + n > size:
                return -22
            lo = off // block * block
            hi = (off + n + block - 1) // block * block
            if faulty('erase'):
                cut()
            log('erase {} {} {}'.format(k, off, n))
            for i in range(lo, hi):
                part[i] = 0xFF
            save(k)
            return 4
        if cmd == 4:
            off, buf = args[1], args[2]
            if off + len(buf) > size or len(buf) % 4:
                return -22
            n = len(buf)
            if faulty('write'):
                for i in range(n // 2):      # half the bytes reach the flash
                    part[off + i] &= buf[i]
                save(k)
                cut()
            log('write {} {} {}'.format(k, off, n))
            for i in range(n):
                part[off + i] &= buf[i]
            if faulty('garble'):
                # a flash that programs one byte wrong and says nothing: once
                for i in range(n):
                    if part[off + i]:
                        part[off + i] = 0
                        break
                fault['step'] = None
                try:
                    os.remove('state/fake_rom_fault.json')
                except OSError:
                    pass
            save(k)
            return 0
        if cmd == 5:
            return 0
        return -22

    class Fake:
        pass

    fake = Fake()
    for name in dir(real):
        if not name.startswith('__'):
            setattr(fake, name, getattr(real, name))
    fake.rom_ioctl = rom_ioctl
    fake.VfsRom = VfsRom
    fake.mount = mount
    fake.umount = umount
    fake.v2g_fake = True
    sys.modules['vfs'] = fake
    if bytes(parts[0][:3]) == header:
        try:
            mount(VfsRom(views[0]), '/rom')
            sys.path.insert(0, '/rom')
        except OSError:
            pass


_v2g_fake_romfs(_V2G_ROM_SIZE, _V2G_ROM_BLOCK, _V2G_ROM_PARTS)
del _v2g_fake_romfs, _V2G_ROM_SIZE, _V2G_ROM_BLOCK, _V2G_ROM_PARTS
