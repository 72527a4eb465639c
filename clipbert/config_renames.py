"""Config keys that have new names: the message for user input that names an old key, and the translation of
configs saved with the old names (a checkpoint's config.json), so that those still load."""

from __future__ import annotations

RENAMED_KEYS: dict[str, str] = {  # old dotted key -> its name now
    "sampling.num_frames": "sampling.frames_per_clip",
    "sampling.fps": "sampling.clip_fps",
    "sampling.dense_num_frames": "sampling.dense_frames",
}


def renamed_key_message(key: str) -> str | None:
    """"<old> was renamed to <new>" for an old dotted key, None for any other key."""
    new = RENAMED_KEYS.get(key)
    return None if new is None else f"{key} was renamed to {new}"


def translate_renamed_keys(values: dict) -> dict:
    """A copy of a nested config dict (config_to_dict layout) with each old key under its new name.

    Meant for saved configs only; a key present under both names keeps the new name's value.
    """
    out = {name: dict(sub) if isinstance(sub, dict) else sub for name, sub in values.items()}
    for old, new in RENAMED_KEYS.items():
        section, old_name = old.split(".", 1)
        new_name = new.split(".", 1)[1]
        sub = out.get(section)
        if isinstance(sub, dict) and old_name in sub:
            sub.setdefault(new_name, sub.pop(old_name))
    return out
