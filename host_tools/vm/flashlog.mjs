// The virtual board's flash, mirrored to the state folder in the order the firmware wrote it.
//
// The board's files live in the VM's in-memory filesystem. Every change under the flash root
// (a file written, created or truncated, a rename, a removal, a new folder) is noted here as it
// happens; flush() then does the same changes to the state folder one after the other, each
// file put in place atomically (temporary file + rename), as a flash filesystem commits a
// file. A power cut (the Node process killed) during a flush leaves the folder as the board's
// flash was at some moment of its history, never newer files beside older ones that were
// written before them: a journal that says a setting was applied implies the setting's file.
//
// A file's content is read when the flush writes it: while nothing rewrote its bytes since
// the write that was noted, that is the content of that moment. Before bytes a pending note
// refers to are overwritten or cut, the note keeps a copy of them.
import fs from "node:fs";
import path from "node:path";

const O_APPEND = 1024;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;

export class FlashLog {
  // FS: the VM's filesystem object; root: the flash folder in it ("/flash"); cutAfter: for
  // power-cut tests, "PATH" or "PATH:TEXT": a flush that has just put PATH (under root) in
  // place, holding TEXT, kills the process as a power cut would; null for none.
  constructor(FS, root, cutAfter = null) {
    this.FS = FS;
    this.root = root;
    const i = cutAfter ? cutAfter.indexOf(":") : -1;
    this.cutAfter = i < 0 ? cutAfter : cutAfter.slice(0, i);
    this.cutText = i < 0 ? null : cutAfter.slice(i + 1);
    this.ops = [];
    this.hook();
  }

  rel(p) {
    if (typeof p !== "string") return null;
    // some calls (rmdir) pass the path as the program gave it: relative to the VM's cwd
    const norm = p.startsWith("/") ? path.posix.normalize(p) : path.posix.join(this.FS.cwd(), p);
    const prefix = this.root + "/";
    return norm.startsWith(prefix) ? norm.slice(prefix.length) : null;
  }

  nodeRel(node) {
    try { return this.rel(this.FS.getPath(node)); } catch (e) { return null; }
  }

  // A file's bytes now are its content at the moment of its last note.
  noteWrite(node) {
    const rel = this.nodeRel(node);
    if (rel === null) return;
    const last = this.ops[this.ops.length - 1];
    if (last && last.op === "write" && last.node === node && last.rel === rel && !last.data) {
      last.len = node.usedBytes;      // nothing happened in between: one write
      return;
    }
    this.ops.push({ op: "write", rel, node, len: node.usedBytes });
  }

  // The node's bytes are about to change in place: pending notes keep what they refer to.
  keep(node) {
    for (const o of this.ops) {
      if (o.op === "write" && o.node === node && !o.data) {
        o.data = node.contents ? Uint8Array.from(node.contents.subarray(0, o.len)) : new Uint8Array(0);
      }
    }
  }

  hook() {
    const FS = this.FS;
    const self = this;
    const wrap = (name, before, after) => {
      const orig = FS[name];
      FS[name] = function (...a) {
        if (before) before(...a);
        const r = orig.apply(this, a);
        after(r, ...a);
        return r;
      };
    };
    wrap("mknod", null, (node) => {
      const rel = self.nodeRel(node);
      if (rel === null) return;
      if ((node.mode & S_IFMT) === S_IFDIR) self.ops.push({ op: "mkdir", rel });
      else self.noteWrite(node);
    });
    wrap("doTruncate", (stream, node) => self.keep(node), (r, stream, node) => self.noteWrite(node));
    wrap("write", (stream, buffer, offset, length, position) => {
      const node = stream.node;
      let pos = position === undefined ? stream.position : position;
      if (stream.flags & O_APPEND) pos = node.usedBytes;
      if (pos < node.usedBytes) self.keep(node);
    }, (r, stream) => self.noteWrite(stream.node));
    wrap("rename", null, (r, from, to) => {
      const a = self.rel(from);
      const b = self.rel(to);
      if (a !== null && b !== null) self.ops.push({ op: "rename", rel: a, to: b });
      else if (a !== null) self.ops.push({ op: "remove", rel: a });
      else if (b !== null) self.noteWrite(FS.lookupPath(to).node);
    });
    wrap("unlink", null, (r, p) => { const rel = self.rel(p); if (rel !== null) self.ops.push({ op: "remove", rel }); });
    wrap("rmdir", null, (r, p) => { const rel = self.rel(p); if (rel !== null) self.ops.push({ op: "remove", rel }); });
  }

  holds(file) {
    if (this.cutText === null) return true;
    try { return fs.readFileSync(file).includes(this.cutText); } catch (e) { return false; }
  }

  // Do the noted changes to the host folder dir, oldest first.
  flush(dir) {
    const ops = this.ops;
    this.ops = [];
    for (const o of ops) {
      const host = path.join(dir, o.rel);
      try {
        if (o.op === "write") {
          const data = o.data || (o.node.contents ? o.node.contents.subarray(0, o.len) : new Uint8Array(0));
          fs.mkdirSync(path.dirname(host), { recursive: true });
          const tmp = host + ".vboard-tmp";
          fs.writeFileSync(tmp, data);
          fs.renameSync(tmp, host);
        } else if (o.op === "mkdir") {
          fs.mkdirSync(host, { recursive: true });
        } else if (o.op === "rename") {
          fs.mkdirSync(path.dirname(path.join(dir, o.to)), { recursive: true });
          fs.renameSync(host, path.join(dir, o.to));
        } else {
          fs.rmSync(host, { recursive: true, force: true });
        }
      } catch (e) {
        process.stderr.write(`mpvm: mirroring ${o.op} ${o.rel} to ${dir}: ${e.message}\n`);
      }
      if (this.cutAfter && (o.to || o.rel) === this.cutAfter && o.op !== "remove" &&
          this.holds(path.join(dir, this.cutAfter))) {
        process.kill(process.pid, "SIGKILL");    // the power cut the test asked for
      }
    }
  }
}
