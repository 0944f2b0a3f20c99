# A ROMFS partition for the virtual board, for tests only. The MicroPython VM has no ROMFS
# (no vfs.rom_ioctl, no VfsRom), so this stands in for what a board's own build does in C:
# - vfs.rom_ioctl over one partition of SIZE bytes kept in state/fake_rom0.bin on the board's
#   flash (so it survives the VM's restarts as a real partition survives a reset), with
#   flash semantics: erase (3) sets 0xFF by blocks, write (4) can only clear bits;
# - at boot, a partition that starts with the ROMFS header is "mounted" at /rom by unpacking
#   its files into /rom on the VM's RAM filesystem (not the board's flash), and /rom goes in
#   front of sys.path, as MicroPython does on a board with ROMFS.
# It is stricter than a board in one way: erasing or writing while /rom is mounted is refused
# (-16, EBUSY), so a deploy that forgets to unmount shows up.
# The test prepends `exec(open('state/fake_rom.py').read())` to the boot.py it flashes.

_V2G_ROM_SIZE = 0x40000        # the test board's board.json "romfs" size
_V2G_ROM_BLOCK = 4096


def _v2g_fake_romfs(size, block):
    import sys
    import vfs as real

    path = 'state/fake_rom0.bin'
    header = b'\xd2\xcd\x31'
    try:
        with open(path, 'rb') as f:
            part = bytearray(f.read())
    except OSError:
        part = bytearray(b'\xff' * size)
    st = {'mounted': False}

    def save():
        with open(path, 'wb') as f:
            f.write(part)

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
        import os
        if st['mounted']:
            raise OSError(1)             # EPERM: already mounted
        os.mkdir(where)
        for name, data in obj.entries:
            if data is None:
                os.mkdir(where + '/' + name)
            else:
                with open(where + '/' + name, 'wb') as f:
                    f.write(data)
        st['mounted'] = True

    def umount(where):
        if where == '/rom' and st['mounted']:
            rmtree('/rom')
            st['mounted'] = False
            return
        return real.umount(where)

    def rom_ioctl(cmd, *args):
        if cmd == 1:
            return 1
        if not args or args[0] != 0:
            return -22
        if cmd == 2:
            return memoryview(part)
        if cmd == 6:
            return block
        if cmd in (3, 4) and st['mounted']:
            return -16
        if cmd == 3:
            off, n = (0, args[1]) if len(args) == 2 else (args[1], args[2])
            if off + n > size:
                return -22
            lo = off // block * block
            hi = (off + n + block - 1) // block * block
            for i in range(lo, hi):
                part[i] = 0xFF
            save()
            return 4
        if cmd == 4:
            off, buf = args[1], args[2]
            if off + len(buf) > size or len(buf) % 4:
                return -22
            for i in range(len(buf)):
                part[off + i] &= buf[i]
            save()
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
    sys.modules['vfs'] = fake
    if bytes(part[:3]) == header:
        try:
            mount(VfsRom(part), '/rom')
            sys.path.insert(0, '/rom')
        except OSError:
            pass


_v2g_fake_romfs(_V2G_ROM_SIZE, _V2G_ROM_BLOCK)
del _v2g_fake_romfs, _V2G_ROM_SIZE, _V2G_ROM_BLOCK
