"""Put on PYTHONPATH of the tests' `v2g secc` (tests/host/secc_fixture.py): in the SECC worker
(the ISO 15118 venv) V2G_TEST_SECC_SEQUENCE_TIMEOUT_S, when set, replaces ISO 15118-20's
60 s V2G_SECC_Sequence_Timeout, so that the silent-vehicle test sees the SECC's own timeout
end the session in seconds, not a minute. Anywhere else (the gateway's venv has no
`iso15118`) it does nothing."""

import os

_S = os.environ.get("V2G_TEST_SECC_SEQUENCE_TIMEOUT_S")
if _S:
    try:
        from enum import Enum

        from iso15118.shared.messages.iso15118_20 import timeouts as _t
    except ImportError:
        pass
    else:
        _m = {name: m.value for name, m in _t.Timeouts.__members__.items()}
        _m["V2G_SECC_SEQUENCE_TIMEOUT"] = float(_S)
        _t.Timeouts = Enum("Timeouts", _m, type=float)
