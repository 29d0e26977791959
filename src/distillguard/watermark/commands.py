"""`distillguard watermark detect --text-file F [--key-id ID ...]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distillguard.config import DEFAULT_WATERMARK_SECRET, load_settings
from distillguard.exceptions import InputError

__all__ = ["detect_command"]


def _read_text(path: str) -> str:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a text file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    if b"\x00" in raw[:8192]:
        raise InputError(f"{path}: looks binary (NUL bytes); give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise InputError(f"{path}: empty; nothing to test")
    return text


def detect_command(args: argparse.Namespace) -> int:
    from distillguard.watermark.service import detect_text

    settings = load_settings(args.config)
    text = _read_text(args.text_file)
    if settings.watermark.master_secret == DEFAULT_WATERMARK_SECRET:
        # The default secret cannot have marked a real deployment's text: a "not_detected" under it proves nothing.
        print("warning: testing with the default watermark.master_secret (no --config, DG_CONFIG or "
              "DG_WATERMARK__MASTER_SECRET sets it); use the marking gateway's configuration, or the result says "
              "nothing about its watermark", file=sys.stderr)
    try:
        result = detect_text(text, args.key_ids or ["global"], settings, tokenizer_path=getattr(args, "tokenizer", None),
                             scheme=getattr(args, "scheme", "unigram"))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    print(json.dumps(result, indent=2))
    if result.get("verdict") == "too_short":
        print(f"note: {result['note']}", file=sys.stderr)
    return 0
