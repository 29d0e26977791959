"""Build: the gateway's per-request modules compiled with mypyc when a C compiler is at hand, else pure Python.

Everything else about the package is in pyproject.toml. Which modules, and why, is in
``src/distillguard/_compiled.py``; the measured gain is in bench/RESULTS.md ("mypyc"). Set
``DISTILLGUARD_PURE_PYTHON=1`` to build without compiling. Any failure to compile (no compiler, no Python headers,
no mypyc) falls back to the pure-Python package with one line saying why; the source is the same either way.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import runpy
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
_compiled = runpy.run_path(str(ROOT / "src" / "distillguard" / "_compiled.py"))
COMPILED: tuple[str, ...] = _compiled["COMPILED"]
SOURCES_FILE: str = _compiled["SOURCES_FILE"]


def _say(message: str) -> None:
    print(f"distillguard build: {message}", file=sys.stderr, flush=True)


def _why_not() -> str | None:
    """Why this machine cannot compile the modules, or None when it can."""
    if os.environ.get("DISTILLGUARD_PURE_PYTHON"):
        return "DISTILLGUARD_PURE_PYTHON is set"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} not found)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h)"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed"
    return None


def _extensions() -> list[Extension]:
    reason = _why_not()
    if reason is not None:
        _say(f"pure Python ({reason}); the gateway works the same, at more CPU per request")
        return []
    from mypyc.build import mypycify

    paths = [str(Path("src", *name.split(".")).with_suffix(".py")) for name in COMPILED]
    # Third-party packages are typed as Any (`--no-site-packages`), whatever the interpreter running the build has
    # installed: a library's stubs may promise less than it does (httptools' `URL.query` is typed `bytes` and is
    # None for a URL without a query), and compiled code checks every declared type at run time, so trusting a
    # stub would turn its mistake into a TypeError on every request; and the build must not depend on whether the
    # dependencies happened to be installed before it. Any costs a little speed at those call sites and nothing
    # else. Modules it only follows (config, detectors) are not checked here (`make lint` does).
    options = ["--config-file", os.devnull, "--no-site-packages", "--ignore-missing-imports", "--follow-imports", "silent",
               "--python-version", "3.11"]
    return list(mypycify(options + paths, opt_level="3", debug_level="0", group_name="distillguard._gateway"))


class _OptionalBuildExt(build_ext):
    """Compiles the extensions and records their sources' digests; on any failure, leaves pure Python."""

    def run(self) -> None:
        (ROOT / "src" / "distillguard" / SOURCES_FILE).unlink(missing_ok=True)  # no record of a build that may fail
        if self.inplace or self.editable_mode:  # an earlier build's extension modules would shadow their source
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                for leftover in (ROOT / "src" / "distillguard").rglob("*" + suffix):
                    leftover.unlink()
        # The digests of the sources as they are before compiling: an edit during the build makes the build stale.
        digests = {name: _compiled["source_digest"](ROOT / "src" / Path(*name.split(".")).with_suffix(".py"))
                   for name in COMPILED}
        try:
            super().run()
        except Exception as exc:  # a compiler or linker error: the package still works without the extensions
            _say(f"pure Python (compiling failed: {type(exc).__name__}: {exc}); the gateway works the same, "
                 "at more CPU per request")
            return
        if not self.extensions:
            return
        for folder in {Path(self.build_lib), ROOT / "src"} if (self.inplace or self.editable_mode) else {Path(self.build_lib)}:
            (folder / "distillguard").mkdir(parents=True, exist_ok=True)
            (folder / "distillguard" / SOURCES_FILE).write_text(json.dumps(digests, indent=0, sort_keys=True))
        _say(f"compiled {len(COMPILED)} modules with mypyc")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            raise RuntimeError(f"{ext.name}: {exc}") from exc

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        if self.extensions:
            outputs.append(str(Path(self.build_lib) / "distillguard" / SOURCES_FILE))
        return outputs


setup(ext_modules=_extensions(), cmdclass={"build_ext": _OptionalBuildExt})
