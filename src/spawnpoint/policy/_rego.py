"""A thin, typed layer over regopy (rego-cpp) for compiling a policy once and evaluating it.

regopy's public `Output` is not used on the hot path, on purpose: it renders the result with
rego-cpp's JSON writer, which does not escape strings (1.5.2). A value such as
`x"]], "allow": true, "y": ["` in a template name comes out as raw JSON text, so parsing that
text either fails or lets the input forge parts of the answer. The result is read instead by
walking the output's node tree through the C API, where every string is a separate node.
Going through the C API also skips regopy's per-value Python wrappers when the input is
marshalled, a large share of a decision's time.

Only this module touches regopy internals (`regopy.rego_shared.rego`, `Interpreter._impl`,
`Bundle._impl`); it checks at import that the C functions it calls exist.
"""

from __future__ import annotations

import ctypes
import math
import re
import threading
from collections.abc import Mapping
from typing import Any, Final

import regopy  # type: ignore[import-untyped]
from regopy import rego_shared

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
NEWLINE: Final = b"\n"


class RegoCompileError(ValueError):
    """A module does not parse or compile."""


class RegoRuntimeError(RuntimeError):
    """rego-cpp returned errors instead of a result."""


class RegoUndefined(Exception):
    """The query has no result (a referenced document is undefined)."""


# Node kinds of the rego-cpp C API (rego.h).
_ARRAY: Final = 1004
_SET: Final = 1005
_OBJECT: Final = 1006
_OBJECT_ITEM: Final = 1007
_INT: Final = 1008
_FLOAT: Final = 1009
_STRING: Final = 1010
_TRUE: Final = 1011
_FALSE: Final = 1012
_NULL: Final = 1013
_UNDEFINED: Final = 1014
_TERMS: Final = 1015
_RESULTS: Final = 1017
_RESULT: Final = 1018
_ERROR: Final = 1800
_ERROR_MESSAGE: Final = 1801
_ERROR_CODE: Final = 1803
_ERROR_SEQ: Final = 1804
_WRAPPERS: Final = frozenset({1002, 1003})  # Term, Scalar: one child holding the value

_lib = rego_shared.rego
for _name in (
    "regoNewInput",
    "regoFreeInput",
    "regoInputString",
    "regoInputInt",
    "regoInputFloat",
    "regoInputBoolean",
    "regoInputNull",
    "regoInputObjectItem",
    "regoInputObject",
    "regoInputArray",
    "regoSetInput",
    "regoBundleQuery",
    "regoBundleNode",
    "regoOutputNode",
    "regoFreeOutput",
    "regoNodeType",
    "regoNodeSize",
    "regoNodeGet",
    "regoNodeValueSize",
    "regoNodeValue",
):
    if not hasattr(_lib, _name):  # pragma: no cover - guards a regopy upgrade
        raise ImportError(f"regopy {regopy.__version__} lacks {_name}; spawnpoint needs 1.5")

_new_input = _lib.regoNewInput
_free_input = _lib.regoFreeInput
_push_str = _lib.regoInputString
_push_int = _lib.regoInputInt
_push_float = _lib.regoInputFloat
_push_bool = _lib.regoInputBoolean
_push_null = _lib.regoInputNull
_push_item = _lib.regoInputObjectItem
_push_object = _lib.regoInputObject
_push_array = _lib.regoInputArray
_set_input = _lib.regoSetInput
_bundle_query = _lib.regoBundleQuery
_bundle_node = _lib.regoBundleNode
_output_node = _lib.regoOutputNode
_free_output = _lib.regoFreeOutput
_node_type = _lib.regoNodeType
_node_size = _lib.regoNodeSize
_node_get = _lib.regoNodeGet
_node_value_size = _lib.regoNodeValueSize
_node_value = _lib.regoNodeValue


def _marshal(handle: int, value: Any) -> None:
    """Push `value` onto a rego-cpp input stack (the C API builds documents bottom-up)."""
    kind = type(value)
    if kind is str:
        _push_str(handle, value.encode())
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"policy input keys must be strings, not {type(key).__name__}")
            _push_str(handle, key.encode())
            _marshal(handle, item)
            _push_item(handle)
        _push_object(handle, len(value))
    elif kind is bool:
        _push_bool(handle, value)
    elif kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"policy input integer {value} does not fit in 64 bits")
        _push_int(handle, value)
    elif kind is float:
        if not math.isfinite(value):
            raise ValueError(f"policy input number {value} is not finite")
        _push_float(handle, value)
    elif value is None:
        _push_null(handle)
    elif kind is list or kind is tuple:
        for item in value:
            _marshal(handle, item)
        _push_array(handle, len(value))
    else:
        raise TypeError(f"policy input values must be JSON types, not {kind.__name__}")


def _node_text(node: int) -> str:
    size = _node_value_size(node)
    buffer = ctypes.create_string_buffer(size)
    if _node_value(node, buffer, size) != 0:
        raise RegoRuntimeError("rego-cpp could not read a value from its output")
    return buffer.value.decode()


def _to_python(node: int) -> Any:
    """Convert an output node to JSON-compatible Python values (sets become lists)."""
    kind = _node_type(node)
    while kind in _WRAPPERS:
        node = _node_get(node, 0)
        kind = _node_type(node)
    if kind == _STRING:
        return _node_text(node)
    if kind == _TRUE:
        return True
    if kind == _FALSE:
        return False
    if kind == _NULL:
        return None
    if kind == _INT:
        return int(_node_text(node))
    if kind == _FLOAT:
        return float(_node_text(node))
    if kind in (_ARRAY, _SET):
        return [_to_python(_node_get(node, i)) for i in range(_node_size(node))]
    if kind == _OBJECT:
        items = {}
        for i in range(_node_size(node)):
            item = _node_get(node, i)
            if _node_type(item) != _OBJECT_ITEM:
                raise RegoRuntimeError(f"unexpected node kind {_node_type(item)} in an object")
            key = _to_python(_node_get(item, 0))
            items[key if isinstance(key, str) else str(key)] = _to_python(_node_get(item, 1))
        return items
    raise RegoRuntimeError(f"unexpected node kind {kind} in the result")


def _error_text(node: int) -> str:
    """`code: message` for each error of an Error or ErrorSeq node."""
    errors = [node] if _node_type(node) == _ERROR else []
    if _node_type(node) == _ERROR_SEQ:
        errors = [_node_get(node, i) for i in range(_node_size(node))]
    messages: list[str] = []
    for error in errors:
        parts = {_node_type(c): c for c in (_node_get(error, i) for i in range(_node_size(error)))}
        message = _node_text(parts[_ERROR_MESSAGE]) if _ERROR_MESSAGE in parts else "error"
        code = _node_text(parts[_ERROR_CODE]) if _ERROR_CODE in parts else ""
        text = f"{code}: {message}" if code else message
        if text not in messages:
            messages.append(text)
    return "; ".join(messages) or "rego-cpp returned an error"


class CompiledQuery:
    """Modules and one query compiled once into a rego-cpp bundle, evaluated many times.

    The interpreter holds the current input, so evaluations are serialized by a lock: one
    evaluation's input can never be seen by another's query. A rego-cpp bundle query keeps the
    compiled plan; only the input is marshalled per call.
    """

    def __init__(self, modules: Mapping[str, str], query: str) -> None:
        self._lock = threading.Lock()
        self._interpreter = regopy.Interpreter()
        # Errors are raised with their text; rego-cpp need not also print them to stderr.
        self._interpreter.log_level = rego_shared.LogLevel.NONE
        # Built-in errors (e.g. to_number("abc")) become query errors rather than undefined
        # values: an undefined `deny` condition would silently allow.
        self._interpreter.strict_built_in_errors = True
        for name, source in modules.items():
            try:
                self._interpreter.add_module(name, source)
            except rego_shared.RegoError as exc:
                raise RegoCompileError(_describe_parse_errors(str(exc), modules)) from None
        bundle = self._interpreter.build(query)
        if not bundle.ok():
            node = _bundle_node(bundle._impl)
            detail = _error_text(node) if node else ""
            raise RegoCompileError(f"the policy does not compile: {detail or 'no detail'}")
        self._bundle = bundle

    def evaluate(self, value: Mapping[str, Any]) -> Any:
        """Evaluate the query with `value` as `input`; return the first expression's value.

        Raises:
            TypeError, ValueError: `value` is not a JSON document rego-cpp can hold.
            RegoUndefined: the query has no result.
            RegoRuntimeError: rego-cpp reported errors.
        """
        with self._lock:
            handle = _new_input()
            try:
                _marshal(handle, value if type(value) is dict else dict(value))
                interpreter = self._interpreter._impl
                if _set_input(interpreter, handle) != 0:
                    raise RegoRuntimeError(rego_shared.rego_get_error(interpreter))
            finally:
                _free_input(handle)
            output = _bundle_query(interpreter, self._bundle._impl)
            if not output:
                raise RegoRuntimeError(rego_shared.rego_get_error(interpreter))
            try:
                return _first_expression(_output_node(output))
            finally:
                _free_output(output)


def _first_expression(root: int) -> Any:
    kind = _node_type(root)
    if kind == _UNDEFINED:
        raise RegoUndefined
    if kind in (_ERROR, _ERROR_SEQ):
        raise RegoRuntimeError(_error_text(root))
    # Results -> Result -> Terms -> first term; anything else is rego-cpp misbehaving.
    if kind != _RESULTS or _node_size(root) == 0:
        raise RegoRuntimeError(f"unexpected output node kind {kind}")
    result = _node_get(root, 0)
    if _node_type(result) != _RESULT:
        raise RegoRuntimeError(f"unexpected result node kind {_node_type(result)}")
    for i in range(_node_size(result)):
        terms = _node_get(result, i)
        if _node_type(terms) == _TERMS and _node_size(terms) > 0:
            return _to_python(_node_get(terms, 0))
    raise RegoRuntimeError("the result has no expression")


def _squash(text: str) -> str:
    return " ".join(text.split())


_PARSE_ERROR = re.compile(r"\(error (\d+):")


def _describe_parse_errors(dump: str, modules: Mapping[str, str]) -> str:
    """`module:line: message` for each error of rego-cpp's S-expression error dump.

    Names and messages in the dump are length-prefixed (`6:x.rego`, `16:this is unclosed`),
    followed by the byte offset of the offending text in the module.
    """
    found: list[str] = []
    for match in _PARSE_ERROR.finditer(dump):
        start = match.end()
        name = dump[start : start + int(match.group(1))]
        offset_text = dump[start + len(name) :].partition("|")[2].partition("|")[0]
        marker = dump.find("(errormsg ", start)
        if marker < 0:
            continue
        length_text, _, rest = dump[marker + len("(errormsg ") :].partition(":")
        if not length_text.isdigit():
            continue
        message = rest[: int(length_text)]
        where = name
        if name in modules and offset_text.isdigit():
            before = modules[name].encode()[: int(offset_text)]
            where = f"{name}:{before.count(NEWLINE) + 1}"
        text = f"{where}: {message}"
        if text not in found:
            found.append(text)
    return "; ".join(found) or _squash(dump)
