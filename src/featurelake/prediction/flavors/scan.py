"""Looking inside model artifacts without running them: pickle opcodes, TorchScript archive entries.

Used by the flavors' :meth:`~featurelake.prediction.flavors.base.ModelFlavor.validate` hooks when a model is
registered. Nothing here unpickles, imports or loads anything the artifact names.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from typing import Any

#: Opcodes that push a text value a later ``STACK_GLOBAL`` may take as module or attribute name.
_TEXT_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_MARK = object()
#: Imports that let a pickle run commands or code when it is loaded: reported as such.
DANGEROUS_MODULES = frozenset(
    {"os", "posix", "nt", "subprocess", "sys", "socket", "shutil", "importlib", "runpy", "pty", "ctypes",
     "code", "codeop", "marshal", "pickle", "_pickle", "webbrowser", "multiprocessing"}
)  # fmt: skip
DANGEROUS_BUILTINS = frozenset(
    {"eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals", "vars"}
)


def pickle_imports(data: bytes) -> tuple[int | None, list[str]]:
    """``(protocol, imports)`` of a pickle: every ``module.name`` its GLOBAL, INST and STACK_GLOBAL opcodes
    reference (what loading it would import and call). Raises ValueError when ``data`` is not one whole
    pickle: unknown opcodes, truncated data, a stack that does not add up, or no STOP."""
    if not data:
        raise ValueError("the file is empty")
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    imports: set[str] = set()
    protocol: int | None = None
    stopped = False
    for op, raw, pos in pickletools.genops(data):
        arg: Any = raw
        name = op.name
        if name == "PROTO":
            protocol = int(arg)
        before, after = op.stack_before, op.stack_after
        if pickletools.markobject in before:
            if _MARK not in stack:
                raise ValueError(f"opcode {name} at byte {pos} needs a mark on the stack and there is none")
            while stack and stack.pop() is not _MARK:
                pass
            rest = len(before) - 2  # the mark and the slice above it are gone
        else:
            rest = len(before)
        if len(stack) < rest:
            raise ValueError(f"opcode {name} at byte {pos} pops {rest} items from a stack of {len(stack)}")
        popped = stack[len(stack) - rest :] if rest else []
        del stack[len(stack) - rest :]
        value: Any = None
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            imports.add(f"{module}.{attr}")
        elif name == "STACK_GLOBAL":
            module, attr = popped
            imports.add(
                f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str) else "<computed>"
            )
        elif name in _TEXT_OPS:
            value = arg if isinstance(arg, str) else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            value = memo.get(int(arg))
        elif name == "MEMOIZE":  # pops the top and pushes it back
            value = memo[len(memo)] = popped[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if not stack:
                raise ValueError(f"opcode {name} at byte {pos} memoizes from an empty stack")
            memo[int(arg)] = stack[-1]
        elif name == "DUP":
            value = popped[-1]
        for item in after:
            stack.append(_MARK if item is pickletools.markobject else value)
        if name == "STOP":
            stopped = True
            if stack:
                raise ValueError(f"{len(stack)} items are left on the stack at STOP (byte {pos})")
    if not stopped:
        raise ValueError("it ends before the pickle's STOP opcode")
    return protocol, sorted(imports)


def dangerous(imports: list[str]) -> list[str]:
    """The imports that can run commands or arbitrary code (``os.system``, ``builtins.eval``, ...)."""
    out = []
    for ref in imports:
        module, _, attr = ref.rpartition(".")
        root = module.split(".")[0]
        if root in DANGEROUS_MODULES or (root in ("builtins", "__builtin__") and attr in DANGEROUS_BUILTINS):
            out.append(ref)
    return out


def torchscript_entries(data: bytes) -> dict[str, Any]:
    """What a ``torch.jit.save`` archive must hold, checked on its zip directory only. Raises ValueError
    naming what is missing (a ``torch.save`` archive has no ``code/`` and no ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        raise ValueError(f"it is not a zip archive ({exc})") from None
    if bad is not None:
        raise ValueError(f"its zip entry {bad} is corrupt")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or not all("/" in n for n in names):
        raise ValueError(
            f"a TorchScript archive has one top directory; this one has {', '.join(sorted(roots))}"
        )
    root = roots.pop()
    has = set(names)
    code = [n for n in names if n.startswith(f"{root}/code/") and n.endswith(".py")]
    missing = [f"{root}/{e}" for e in ("data.pkl", "constants.pkl", "version") if f"{root}/{e}" not in has]
    if not code:
        missing.append(f"{root}/code/*.py")
    if missing:
        hint = " (it looks like torch.save of a module or its weights)" if f"{root}/data.pkl" in has else ""
        raise ValueError(f"it lacks {', '.join(missing)}{hint}")
    return {"archive": root, "entries": len(names), "code_files": len(code)}


__all__ = ["dangerous", "pickle_imports", "torchscript_entries"]
