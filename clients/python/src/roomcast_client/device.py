"""This device's id and device token, kept in a small file so they outlive a restart."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from .state import valid_device_id

log = logging.getLogger("roomcast.client")


def load_device(device_id: str | None, device_file: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    """(device id, device token) from the arguments or `device_file` (made there on first use)."""
    if device_id is not None:
        if not valid_device_id(device_id):
            raise ValueError("device_id must be 8-128 characters of [A-Za-z0-9._:-]")
        return device_id, None
    path = Path(device_file).expanduser() if device_file is not None else None
    if path is not None and path.is_file():
        lines = path.read_text(encoding="utf-8").split()
        if lines and valid_device_id(lines[0]):
            return lines[0], lines[1] if len(lines) > 1 else None
        log.warning("roomcast: ignoring the invalid device id in %s", path)
    new = f"py-{uuid.uuid4().hex}"
    if path is not None:
        store_device(path, new, None)
    return new, None


def store_device(path: Path, device_id: str, token: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(device_id + "\n" + (token + "\n" if token else ""), encoding="utf-8")
    tmp.replace(path)
