"""Traceback text for failure records, written without the cost of ``traceback``'s markers.

A failure record carries its worker's traceback as text (the exception object never
crosses a process boundary). ``traceback.format_exception`` costs about 100 us per
failure on Python 3.11+: it re-parses every source line to place its ``^^^``
markers, and stats every file. That was more than everything else a failure costs
in a worker. :func:`traceback_text` writes the same text without the markers (the
Python 3.10 layout): frames, source lines, chained causes and contexts, folding of
repeated frames, the exception line and its notes, for about 5 us.
"""

from __future__ import annotations

import builtins
import functools
import linecache
import traceback
import types
from typing import Any, Dict, List, Optional, Tuple

_RECURSIVE_CUTOFF = 3
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_GROUP: Any = getattr(builtins, "BaseExceptionGroup", None)  # Python 3.11+


def traceback_text(error: BaseException) -> Optional[str]:
    """The traceback text of ``error`` with chained exceptions, without column markers.

    Returns None for an exception that was never raised and has no cause or context.
    """
    parts = traceback_parts(error)
    return None if parts is None else "".join(parts)


def traceback_parts(error: BaseException) -> Optional[List[str]]:
    """:func:`traceback_text` as the pieces it joins; a frame's piece is the same str
    object each time that frame is formatted (a writer may keep what it made of it)."""
    if error.__traceback__ is None and error.__cause__ is None and error.__context__ is None:
        return None
    chain: List[Tuple[Optional[str], BaseException]] = []
    seen = set()
    current: Optional[BaseException] = error
    while current is not None:
        seen.add(id(current))
        if isinstance(current, SyntaxError) or (_GROUP is not None and isinstance(current, _GROUP)):
            # Rare layouts (carets under a syntax error, nested groups): the stdlib's text.
            return ["".join(traceback.format_exception(type(error), error, error.__traceback__))]
        cause, context = current.__cause__, current.__context__
        if cause is not None and id(cause) not in seen:
            chain.append((_CAUSE, current))
            current = cause
        elif context is not None and not current.__suppress_context__ and id(context) not in seen:
            chain.append((_CONTEXT, current))
            current = context
        else:
            chain.append((None, current))
            current = None
    out: List[str] = []
    for message, exc in reversed(chain):
        if message is not None:
            out.append(message)
        if exc.__traceback__ is not None:
            out.append("Traceback (most recent call last):\n")
            _format_frames(exc.__traceback__, out)
        _format_exception_line(exc, out)
    return out


def _format_frames(tb: Any, out: List[str]) -> None:
    last: Optional[Tuple[str, int, str]] = None
    count = 0
    while tb is not None:
        key, text = _site(tb)
        if key != last:
            _note_repeats(count, out)
            last, count = key, 0
        count += 1
        if count <= _RECURSIVE_CUTOFF:
            out.append(text)
        tb = tb.tb_next
    _note_repeats(count, out)


def _site(tb: Any) -> Tuple[Tuple[str, int, str], str]:
    """(file, line, function) of a traceback entry, and its formatted text.

    Kept by code object and instruction offset: ``tb_lineno`` walks the code's line
    table on every read (a third of a whole traceback's cost, 3.11). The code object is
    kept with it, so its id cannot name another code object while cached.
    """
    code = tb.tb_frame.f_code
    place = (id(code), tb.tb_lasti)
    site = _sites.get(place)
    if site is None or site[0] is not code:
        key = (code.co_filename, tb.tb_lineno, code.co_name)
        text = _frame_texts.get(key)
        if text is None:
            text = _frame_text(key, tb.tb_frame.f_globals)
        if len(_sites) >= _FRAME_CACHE_SIZE:
            _sites.clear()
        site = _sites[place] = (code, key, text)
    return site[1], site[2]


#: Formatted frames (location and source line) by (file, line, function): a worker
#: failing over and over at the same places formats each once. Bounded (a process that
#: runs generated code must not grow it forever): cleared when full.
_FRAME_CACHE_SIZE = 4096
_frame_texts: Dict[Tuple[str, int, str], str] = {}
_sites: Dict[Tuple[int, int], Tuple[types.CodeType, Tuple[str, int, str], str]] = {}


def _frame_text(key: Tuple[str, int, str], module_globals: Any) -> str:
    text = f'  File "{key[0]}", line {key[1]}, in {key[2]}\n'
    line = linecache.getline(key[0], key[1] or 0, module_globals).strip()
    if line:
        text += f"    {line}\n"
    if len(_frame_texts) >= _FRAME_CACHE_SIZE:
        _frame_texts.clear()
    _frame_texts[key] = text
    return text


def _note_repeats(count: int, out: List[str]) -> None:
    if count > _RECURSIVE_CUTOFF:
        extra = count - _RECURSIVE_CUTOFF
        out.append(f"  [Previous line repeated {extra} more time{'s' if extra > 1 else ''}]\n")


def _format_exception_line(exc: BaseException, out: List[str]) -> None:
    kind = type(exc)
    name = kind.__qualname__
    module = kind.__module__
    if module not in ("__main__", "builtins"):
        name = f"{module if isinstance(module, str) else '<unknown>'}.{name}"
    try:
        text = str(exc)
    except Exception:
        text = "<exception str() failed>"
    out.append(f"{name}: {text}\n" if text else f"{name}\n")
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        for note in notes:
            try:
                note_text = str(note)
            except Exception:
                note_text = "<note str() failed>"
            out.extend(line + "\n" for line in note_text.split("\n"))
    elif notes is not None:
        try:
            out.append(f"{notes!r}\n")
        except Exception:
            out.append("<__notes__ repr() failed>\n")


#: The file name cloudpickle gives code it sends by value (functions of ``__main__``).
DYNAMIC_CODE = "<dynamic-code>"


def source_file(func: Any) -> Optional[str]:
    """The file of ``func``'s code when it is sent by value (defined in ``__main__``), else None."""
    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    if code is None or getattr(func, "__module__", None) != "__main__":
        return None
    return str(code.co_filename)


def restore_source_file(func: Any, filename: Optional[str]) -> None:
    """In a worker: give ``func``'s code sent by value its file back, so tracebacks name it."""
    while isinstance(func, functools.partial):
        func = func.func
    func = getattr(func, "__func__", func)
    code = getattr(func, "__code__", None)
    if filename and code is not None and code.co_filename == DYNAMIC_CODE:
        func.__code__ = _with_file(code, filename)


def _with_file(code: Any, filename: str) -> Any:
    consts = tuple(_with_file(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
