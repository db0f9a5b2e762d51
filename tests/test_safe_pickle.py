"""The restricted unpickler reads plain-data official pickles and never runs code from a file (issue 7)."""
import os
import pickle
import subprocess
import sys

import pytest

from searle_lib.safe_pickle import UnsafePickleError, atomic_pickle_dump, safe_load_pickle, safe_loads

PLAIN = {"dog": ["a photo of dog that runs.", "x"], "n": [1, 2.5, True, None, ("t", -3)], "": {}}


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Str(str):
    pass


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips_in_every_protocol(tmp_path, protocol):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(PLAIN, protocol=protocol))
    assert safe_load_pickle(path) == PLAIN


def test_os_system_payload_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "concept_to_phrases.pkl"
    path.write_bytes(pickle.dumps({"dog": [_Evil(marker)]}))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (posix|nt)\.system") as e:
        safe_load_pickle(path)
    assert str(path) in str(e.value)
    assert not marker.exists()
    # The payload is real: the standard unpickler does run it (in a child process), so the check above can fail.
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())",
                    str(path)], check=True)
    assert marker.exists()


@pytest.mark.parametrize("obj, shown", [
    ({"a": {1, 2}}, "<class 'set'>"),
    ([b"bytes"], "<class 'bytes'>"),
    ([_Str("s")], "_Str"),
    ([eval], "builtins.eval"),
    ([complex(1, 2)], "builtins.complex"),
])
def test_non_plain_types_are_refused(obj, shown):
    with pytest.raises(UnsafePickleError, match="refusing to unpickle") as e:
        safe_loads(pickle.dumps(obj), "f.pkl")
    assert shown in str(e.value)


def test_truncated_missing_and_wrong_top_level(tmp_path):
    path = tmp_path / "image_names.pkl"
    path.write_bytes(pickle.dumps(["a", "b"] * 100)[:-7])
    with pytest.raises(pickle.UnpicklingError, match="image_names.pkl: not a readable pickle"):
        safe_load_pickle(path)
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        safe_load_pickle(tmp_path / "nope.pkl")
    path.write_bytes(pickle.dumps(["a"]))
    assert safe_load_pickle(path, expect=list) == ["a"]
    with pytest.raises(pickle.UnpicklingError, match="expected a pickled dict, found list"):
        safe_load_pickle(path, expect=dict)


def test_atomic_dump_writes_readable_protocol_4_and_refuses_objects(tmp_path):
    path = atomic_pickle_dump(PLAIN, tmp_path / "sub" / "out.pkl")
    assert pickle.loads(path.read_bytes()) == PLAIN
    assert path.read_bytes()[:2] == b"\x80\x04"  # what Python 3.8 (the official environment) reads and writes
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(UnsafePickleError):
        atomic_pickle_dump({"x": object()}, tmp_path / "bad.pkl")
    assert not (tmp_path / "bad.pkl").exists()
