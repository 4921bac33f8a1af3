"""Helpers for tests that read, edit or damage checkpoint files."""

import os
import pickle

from scorefn.runs import checkpoints


def edit(path: str, change) -> None:
    """Load the checkpoint at ``path``, apply ``change(payload)`` and write it back under the
    same kind and version (a planted value a test then looks for)."""
    header = checkpoints.read_header(path)
    payload = checkpoints.load(path, kind=header["kind"], version=header["version"])
    change(payload)
    checkpoints.save(path, payload, kind=header["kind"], version=header["version"])


def kind_of(path: str) -> str:
    """The kind a checkpoint file's header names."""
    return checkpoints.read_header(path)["kind"]


class _Marker:
    """Unpickling it creates a file: proof that a loader ran code from the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_pickle(path: str, marker: str) -> None:
    """A pickle at ``path`` whose loading would create ``marker``."""
    with open(path, "wb") as fh:
        pickle.dump({"version": 4, "kind": "scorefn.rl", "x": _Marker(marker)}, fh)
    assert not os.path.exists(marker)


def damaged_copies(path: str, folder: str) -> dict[str, str]:
    """Truncated, corrupted (one payload byte flipped), empty and header-cut copies of the
    checkpoint at ``path``, and a folder in place of a file; by name."""
    data = open(path, "rb").read()
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    copies = {"truncated": data[: len(data) // 2], "corrupted": bytes(flipped), "empty": b"",
              "header_cut": data[: len(checkpoints.MAGIC) + 5],
              "foreign": b"PK\x03\x04 not a checkpoint"}
    out = {}
    for name, content in copies.items():
        out[name] = os.path.join(folder, f"{name}.ckpt")
        with open(out[name], "wb") as fh:
            fh.write(content)
    out["folder"] = os.path.join(folder, "a-folder.ckpt")
    os.makedirs(out["folder"], exist_ok=True)
    return out


#: what the error says for each damaged copy
DAMAGE_MESSAGES = {"truncated": "is truncated", "corrupted": "is corrupted", "empty": "is empty",
                   "header_cut": "truncated inside its header",
                   "foreign": "is not a scorefn checkpoint", "folder": "is a folder"}
