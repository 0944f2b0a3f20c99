// Runs MicroPython (the real VM, compiled to WebAssembly) for the host tools.
//
//   node mpvm.mjs run   [--mount HOST:VM]... [--path VM]... [--cwd VM] [--heap BYTES] --code PY
//   node mpvm.mjs board --state DIR [--raw-repl] [--heap BYTES]
//
// `run` executes PY once (top-level await allowed) with host folders copied into the VM's
// filesystem; its output goes to stdout line by line; exit 0, or 1 with the traceback on stderr.
//
// `board` is the engine of the virtual controller board (host_tools/vboard.py owns the pseudo-
// terminals). stdin/stdout carry frames [channel u8][length u32 LE][payload]; channel 0 is JSON
// control, 1 the REPL, 2.. the board's other ports (see CHANNELS). The board's files live in
// /flash and are mirrored to DIR in the order they were written (flashlog.mjs), so they survive
// a restart, and a power cut, like a real flash filesystem. The simulated plant's state goes
// to the host as control frames {"op": "plant", "state": JSON} and comes back to the next
// boot in the environment (V2G_VBOARD_PLANT): the world does not reset with the controller.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { FlashLog } from "./flashlog.mjs";

// V2G_NODE_MODULES (set by host_tools/vm) names the node_modules folder with the VM package:
// an installed v2g has none beside this file.
const require = createRequire(process.env.V2G_NODE_MODULES
  ? path.join(path.dirname(path.resolve(process.env.V2G_NODE_MODULES)), "mpvm-resolve.js")
  : import.meta.url);

function usage(msg) {
  if (msg) process.stderr.write(`mpvm: ${msg}\n`);
  process.stderr.write("usage: mpvm.mjs run [--mount HOST:VM]... [--path VM]... [--cwd VM] --code PY\n" +
                       "       mpvm.mjs board --state DIR [--raw-repl]\n");
  process.exit(2);
}

async function loadVm(opts) {
  let mod;
  try {
    mod = await import(require.resolve("@micropython/micropython-webassembly-pyscript"));
  } catch (e) {
    process.stderr.write("mpvm: the MicroPython VM package is not installed " +
                         "(run `npm ci` in the project folder, or `make test`)\n");
    process.exit(3);
  }
  return mod.loadMicroPython(opts);
}

function parseArgs(argv) {
  const args = { mount: [], path: [], cwd: null, code: null, state: null, rawRepl: false,
                 heap: 1024 * 1024 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => { if (i + 1 >= argv.length) usage(`${a} needs a value`); return argv[++i]; };
    if (a === "--mount") args.mount.push(next());
    else if (a === "--path") args.path.push(next());
    else if (a === "--cwd") args.cwd = next();
    else if (a === "--code") args.code = next();
    else if (a === "--state") args.state = next();
    else if (a === "--heap") args.heap = parseInt(next(), 10);
    else if (a === "--raw-repl") args.rawRepl = true;
    else usage(`unknown argument ${a}`);
  }
  return args;
}

// ---- filesystem helpers -------------------------------------------------------------------

function mkdirp(FS, dir) {
  let cur = "";
  for (const part of dir.split("/").filter(Boolean)) {
    cur += "/" + part;
    try { FS.mkdir(cur); } catch (e) { /* exists */ }
  }
}

// Copy a host folder (or file) into the VM filesystem. Skips caches and dot-folders.
function copyIn(FS, hostPath, vmPath) {
  const st = fs.statSync(hostPath);
  if (st.isDirectory()) {
    mkdirp(FS, vmPath);
    for (const name of fs.readdirSync(hostPath)) {
      // a .vboard-tmp is a mirror write cut by a power cut: never on the board's flash
      if (name.startsWith(".") || name === "__pycache__" || name.endsWith(".vboard-tmp")) continue;
      // the board's port links (STATE/repl.pty -> /dev/pts/N, host_tools/vboard.py) are the
      // host's, not files on the board's flash
      if (name.endsWith(".pty") && fs.lstatSync(path.join(hostPath, name)).isSymbolicLink()) continue;
      copyIn(FS, path.join(hostPath, name), vmPath + "/" + name);
    }
  } else {
    mkdirp(FS, path.posix.dirname(vmPath));
    FS.writeFile(vmPath, fs.readFileSync(hostPath));
  }
}

// ---- run mode -----------------------------------------------------------------------------

async function runMode(args) {
  if (!args.code) usage("run needs --code");
  const mp = await loadVm({
    heapsize: args.heap,
    stdout: (line) => process.stdout.write(line + "\n"),
    stderr: (line) => process.stderr.write(line + "\n"),
    linebuffer: true,
  });
  for (const m of args.mount) {
    const i = m.lastIndexOf(":");
    if (i < 0) usage(`--mount wants HOST:VM, got ${m}`);
    copyIn(mp.FS, m.slice(0, i), m.slice(i + 1));
  }
  mp.registerJsModule("hostio", hostioRun());
  const setup = ["import sys"];
  for (const p of args.path) setup.push(`sys.path.insert(0, ${JSON.stringify(p)})`);
  if (args.cwd) { mkdirp(mp.FS, args.cwd); setup.push(`import os; os.chdir(${JSON.stringify(args.cwd)})`); }
  mp.runPython(setup.join("\n"));
  try {
    await mp.runPythonAsync(args.code);
  } catch (e) {
    if (e.name === "PythonError") {
      if (e.type === "SystemExit") process.exit(0);
      process.stderr.write(e.message + "\n");
      process.exit(1);
    }
    throw e;
  }
  process.exit(0);
}

// In run mode the firmware may still ask for host I/O (the simulator feeds everything itself);
// a monotonic clock is the one thing offered.
function hostioRun() {
  return {
    ticks_us: () => Number(process.hrtime.bigint() / 1000n) & 0x3fffffff,
    emit: (line) => { process.stdout.write(line + "\n"); },
  };
}

// The VM reports Emscripten errno numbers ("OSError: 44"); boards and mpremote use MicroPython's.
const ERRNO = { 44: [2, "ENOENT"], 20: [17, "EEXIST"], 54: [20, "ENOTDIR"], 31: [21, "EISDIR"],
                55: [39, "ENOTEMPTY"], 28: [22, "EINVAL"], 63: [13, "EACCES"], 8: [9, "EBADF"] };
function fixErrno(buf) {
  if (buf.indexOf("OSError") < 0) return buf;
  const text = buf.toString("latin1").replace(/OSError: (\d+)/g, (m, n) =>
    ERRNO[n] ? `OSError: [Errno ${ERRNO[n][0]}] ${ERRNO[n][1]}` : m);
  return Buffer.from(text, "latin1");
}

// ---- board mode ---------------------------------------------------------------------------

const CH_CONTROL = 0, CH_REPL = 1;
const CHANNELS = { link: 2, plant: 3, rs485: 4, can: 5 };

function sendFrame(ch, payload) {
  const buf = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const head = Buffer.alloc(5);
  head[0] = ch;
  head.writeUInt32LE(buf.length, 1);
  process.stdout.write(Buffer.concat([head, buf]));
}
const control = (obj) => sendFrame(CH_CONTROL, Buffer.from(JSON.stringify(obj)));

async function boardMode(args) {
  if (!args.state) usage("board needs --state");
  // REPL output: boards end lines with \r\n; the VM writes bare \n for printed text.
  let replOut = [];
  let lastByte = 0;
  const flushRepl = () => {
    if (replOut.length) { sendFrame(CH_REPL, fixErrno(Buffer.from(replOut))); replOut = []; }
  };
  const mp = await loadVm({
    heapsize: args.heap,
    linebuffer: false,
    stdout: (u8) => {
      for (const c of u8) {
        if (c === 10 && lastByte !== 13) replOut.push(13);
        replOut.push(c);
        lastByte = c;
      }
      if (replOut.length > 4096) flushRepl();
    },
    stderr: (u8) => process.stderr.write(Buffer.from(u8)),
  });
  const FS = mp.FS;
  mkdirp(FS, "/flash");
  if (fs.existsSync(args.state)) copyIn(FS, args.state, "/flash");
  // from here on every change to /flash is noted, and mirrored to the state folder in order
  const flash = new FlashLog(FS, "/flash", process.env.V2G_VBOARD_CUT_AFTER || null);

  // Byte queues between the host's ports and the firmware (read by boards/sim HAL via hostio).
  const rx = {}; const txPending = []; const dropped = {};
  let interrupted = false;
  // The plant's state as the board host kept it across the last reset (V2G_VBOARD_PLANT, set
  // by host_tools/vboard.py), then as this boot's HAL last handed it over.
  let plantKept = process.env.V2G_VBOARD_PLANT || null;
  for (const name of Object.keys(CHANNELS)) { rx[name] = []; dropped[name] = 0; }
  mp.registerJsModule("hostio", {
    // Bytes waiting on a port, as a Uint8Array (bytes() in Python), or null when none.
    // With max > 0 at most max bytes; the rest waits for the next read. With cap > 0 the
    // port holds at most cap bytes, as a UART's receive ring does: what arrived beyond it
    // is lost (counted, see dropped()). Each byte costs the VM a conversion, so a board
    // reads a bounded amount a step, however fast the host writes.
    read: (name, max, cap) => {
      const q = rx[name];
      if (!q || q.length === 0) return null;
      let all = q.length === 1 ? q[0] : Buffer.concat(q);
      if (cap > 0 && all.length > cap) { dropped[name] += all.length - cap; all = all.subarray(0, cap); }
      q.length = 0;
      if (max > 0 && all.length > max) { q.push(all.subarray(max)); all = all.subarray(0, max); }
      return new Uint8Array(all);
    },
    // Bytes lost so far to a full port (see read's cap).
    dropped: (name) => dropped[name] || 0,
    // Python passes bytes as a hex string: the cheapest form the FFI converts without copies per byte.
    write: (name, hex) => { txPending.push([CHANNELS[name], Buffer.from(hex, "hex")]); },
    ticks_us: () => Number(process.hrtime.bigint() / 1000n) & 0x3fffffff,
    board: () => "vboard",
    // Ctrl-C on the REPL stops the running application, as on a board.
    interrupted: () => interrupted,
    // A reset asked by the firmware or the plant port ("reboot"): like pressing RST.
    reset: () => { setTimeout(() => { inRaw = false; softReset(); }, 0); },
    // The plant lives on through a reset of the controller: its state goes to the host.
    keep_plant: (text) => { plantKept = String(text); control({ op: "plant", state: plantKept }); },
    kept_plant: () => plantKept,
  });
  mp.runPython("import sys, os\nos.chdir('/flash')\nsys.path[:] = ['', '/flash', '/flash/lib', '.frozen']");

  // Run boot.py then main.py as a board does; main.py may start asyncio tasks and return.
  // After a soft reset in raw REPL a board runs boot.py only: main.py runs only when the board
  // comes back to the friendly REPL (MicroPython's pyexec_mode_kind check), so a flasher gets
  // fresh module state without the application started.
  const runFile = async (name) => {
    try { FS.stat("/flash/" + name); } catch (e) { return; }
    try {
      await mp.runPythonAsync(`exec(open(${JSON.stringify(name)}).read(), {'__name__': '__main__'})`);
    } catch (e) {
      const text = (e.name === "PythonError" ? e.message : String(e)).replace(/\n/g, "\r\n");
      replOut.push(...Buffer.from(text + "\r\n"));
    }
  };
  await runFile("boot.py");
  if (!args.rawRepl) await runFile("main.py");
  flushRepl();   // what boot.py printed comes before the REPL's banner, as on a board

  mp.replInit();
  if (args.rawRepl) {
    // After a soft reset in raw REPL mode a board comes back in raw REPL; mpremote expects it.
    replOut = [];
    await mp.replProcessCharWithAsyncify(1);
  }
  flushRepl();

  const save = () => flash.flush(args.state);

  // Serial input is processed one char at a time, in order. The VM's own raw-paste mode hangs
  // (it wants to block for input), so raw-paste (Ctrl-E A Ctrl-A) is served here: the code is
  // received with the protocol's flow control, then fed to the VM's raw REPL in one go. That
  // saves mpremote's fallback path, which sleeps 10 ms for every 256 bytes it sends.
  const PASTE_WINDOW = 4096;
  let pending = Buffer.alloc(0);
  let busy = false;
  let held = [];
  let paste = null;   // while receiving a raw-paste: {code: [], left: window bytes left}
  let inRaw = args.rawRepl;
  const pump = async () => {
    if (busy) return;
    busy = true;
    try {
      while (pending.length) {
        const c = pending[0];
        pending = pending.subarray(1);
        if (paste) { if (pastedChar(c)) return; continue; }
        if (held.length || (c === 0x05 && inRaw)) {
          held.push(c);
          if (held.length === 1) continue;
          if (held.length === 2 && held[1] === 0x41) continue;
          if (held.length === 3 && held[1] === 0x41 && held[2] === 0x01) {
            held = [];
            paste = { code: [], left: PASTE_WINDOW };
            sendFrame(CH_REPL, Buffer.from([0x52, 0x01, PASTE_WINDOW & 0xff, PASTE_WINDOW >> 8]));
            continue;
          }
          const feed = held; held = [];
          for (const h of feed) { if (feedChar(h)) return; }
          continue;
        }
        if (feedChar(c)) return;
      }
    } finally {
      busy = false;
      flushRepl();
    }
  };
  const pastedChar = (c) => {
    if (c !== 0x04) {
      paste.code.push(c);
      if (--paste.left === 0) { paste.left = PASTE_WINDOW; sendFrame(CH_REPL, Buffer.from([0x01])); }
      return false;
    }
    // End of the pasted code: acknowledge, then run it through the raw REPL, whose "OK" the
    // raw-paste protocol does not have.
    sendFrame(CH_REPL, Buffer.from([0x04]));
    const code = paste.code;
    paste = null;
    flushRepl();
    for (const b of code) mp.replProcessChar(b);
    const r = mp.replProcessChar(0x04);
    if (replOut[0] === 0x4f && replOut[1] === 0x4b) replOut.splice(0, 2);
    flushRepl();
    return r !== 0 && softReset();
  };
  const feedChar = (c) => {
    if (c === 0x03) interrupted = true;
    if (c === 0x01) inRaw = true;
    if (c === 0x02) inRaw = false;
    const r = mp.replProcessChar(c);
    flushRepl();
    return r !== 0 && softReset();
  };
  const softReset = () => {
    // The host side restarts the VM process; the plant's state and the files go to it first.
    try {
      mp.runPython("import sys\n_h = sys.modules.get('board.hal')\n" +
                   "if _h is not None and hasattr(_h, 'save_plant'): _h.save_plant()\ndel _h");
    } catch (e) { /* firmware without it: the host keeps the state last handed over */ }
    while (txPending.length) { const [ch, b] = txPending.shift(); sendFrame(ch, b); }
    save();
    control({ op: "soft_reset", raw: inRaw });
    process.exit(0);
  };

  // Frames from the host.
  let inbuf = Buffer.alloc(0);
  process.stdin.on("data", (data) => {
    inbuf = Buffer.concat([inbuf, data]);
    while (inbuf.length >= 5) {
      const ch = inbuf[0];
      const len = inbuf.readUInt32LE(1);
      if (inbuf.length < 5 + len) break;
      const payload = inbuf.subarray(5, 5 + len);
      inbuf = inbuf.subarray(5 + len);
      if (ch === CH_REPL) {
        pending = Buffer.concat([pending, payload]);
        pump();
      } else if (ch === CH_CONTROL) {
        const msg = JSON.parse(payload.toString());
        if (msg.op === "save") { save(); control({ op: "saved" }); }
        // The reset button (the plant port's "reboot"): a reset into the friendly REPL,
        // which runs boot.py and main.py, whether or not the application is running.
        else if (msg.op === "reset") { setTimeout(() => { inRaw = false; softReset(); }, 0); }
        else if (msg.op === "shutdown") { save(); control({ op: "saved" }); process.exit(0); }
      } else {
        const name = Object.keys(CHANNELS).find((k) => CHANNELS[k] === ch);
        if (name) rx[name].push(Buffer.from(payload));
      }
    }
  });
  // The parent went away: keep the files and leave, never linger as an orphan.
  process.stdin.on("end", () => { save(); process.exit(0); });

  // Port output from the firmware, and a periodic mirror of the filesystem to the state folder.
  setInterval(() => {
    while (txPending.length) { const [ch, b] = txPending.shift(); sendFrame(ch, b); }
  }, 2);
  setInterval(() => { if (!busy) save(); }, 300);
  control({ op: "ready" });
}

const [mode, ...rest] = process.argv.slice(2);
const args = parseArgs(rest);
if (mode === "run") await runMode(args);
else if (mode === "board") await boardMode(args);
else usage(mode ? `unknown mode ${mode}` : "");
