"""The EXI codec both ends of the tests and the SECC use: the iso15118 package's Java codec
(EXIficient through py4j) with its JAXB contexts kept (java/CachedContextCodec.java).

The stock codec builds a new JAXBContext for every message, which costs tens of ms per
encode or decode on a quiet machine and hundreds on a busy one: most of a charge loop
answer's time and all of its tail. The Java class is compiled once per machine with the
JRE's own compiler module (jdk.compiler, in Debian's openjdk-*-jre-headless) into a cache
beside the venv; where that is impossible the stock codec is used and `fallback` says why.

Runs in the ISO 15118 venv: the standard library, py4j and the package only.
"""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile

from iso15118.shared.exificient_exi_codec import ExificientEXICodec
from iso15118.shared.settings import JAR_FILE_PATH

log = logging.getLogger("v2g.secc.exi")

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java", "CachedContextCodec.java")
# --add-opens as the package launches it. TieredStopAtLevel=1 keeps the JIT at its quick tier:
# an EXI message pair costs the same (about 1 ms once warm) and the JVM spends about half the
# CPU getting there (measured: 1.2-2.2 s instead of 2.1-4.5 s for start, warm-up and 480 pairs),
# which is the gateway's CPU the other stations' sessions and the bridge share.
JAVA_OPTS = ["--add-opens", "java.base/java.lang=ALL-UNNAMED", "-XX:TieredStopAtLevel=1"]


def _cache_dirs(key):
    yield os.path.join(sys.prefix, "v2g-exi", key)
    yield os.path.join(tempfile.gettempdir(), "v2g-exi-{}-{}".format(os.getuid(), key))


def compiled():
    """The folder holding the compiled class (compiled now if not yet), or raise OSError /
    RuntimeError naming why it cannot be had."""
    h = hashlib.sha256()
    for p in (SOURCE, JAR_FILE_PATH):
        with open(p, "rb") as f:
            h.update(f.read())
    key = h.hexdigest()[:16]
    why = "no folder to compile into"
    for d in _cache_dirs(key):
        if os.path.exists(os.path.join(d, "v2g", "exi", "CachedContextCodec.class")):
            return d
        try:
            os.makedirs(d, exist_ok=True)
            tmp = tempfile.mkdtemp(dir=d)
        except OSError as e:
            why = str(e)
            continue
        p = subprocess.run(["java", "-m", "jdk.compiler/com.sun.tools.javac.Main", "-nowarn",
                            "-d", tmp, "-cp", JAR_FILE_PATH, SOURCE],
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError("cannot compile {}: {}".format(os.path.basename(SOURCE),
                                                            (p.stderr or p.stdout).strip()[-300:]))
        try:
            os.rename(os.path.join(tmp, "v2g"), os.path.join(d, "v2g"))
        except OSError:
            pass    # another process compiled it meanwhile: the same class from the same source
        shutil.rmtree(tmp, ignore_errors=True)
        return d
    raise OSError(why)


class FastEXICodec(ExificientEXICodec):
    """ExificientEXICodec with the kept JAXB contexts; the stock codec when the class cannot
    be compiled (`fallback` then names why)."""

    def __init__(self):
        self.fallback = None
        try:
            classes = compiled()
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            self.fallback = str(e)
            log.warning("EXI codec: the stock one (slow: a JAXB context per message): %s", e)
            super().__init__()
            return
        from py4j.java_gateway import JavaGateway
        from py4j.protocol import Py4JError

        logging.getLogger("py4j").setLevel(logging.CRITICAL)
        self.gateway = JavaGateway.launch_gateway(
            classpath=os.pathsep.join([JAR_FILE_PATH, classes]), die_on_exit=True, javaopts=JAVA_OPTS)
        try:
            self.exi_codec = self.gateway.jvm.v2g.exi.CachedContextCodec()
        except Py4JError as e:
            # e.g. a jar whose private names moved: the stock codec still works
            self.gateway.shutdown()
            self.fallback = "the kept-context codec does not load: {}".format(str(e).splitlines()[0][:200])
            log.warning("EXI codec: the stock one: %s", self.fallback)
            super().__init__()
