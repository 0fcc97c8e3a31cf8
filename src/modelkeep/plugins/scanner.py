"""Built-in default plugin: the pickle scanner (safe loading).

Loading a pickle runs code: every ``GLOBAL``/``STACK_GLOBAL``/``INST`` opcode imports a callable and
``REDUCE`` calls it, so a ``.pt`` or ``.bin`` file can run ``os.system`` the moment someone calls
``torch.load`` on it. This plugin finds the pickles in a version being registered and lists the
callables they import, **without executing anything**: it walks the opcodes with
:func:`pickletools.genops` and replays only their stack effects, enough to know the string operands
of ``STACK_GLOBAL`` (including strings fetched back from the memo).

Which files: by name (``.pt``, ``.pth``, ``.bin``, ``.pkl``, ``.pickle``, ``.ckpt``, ``.joblib``)
and by content, whatever the name: a pickle protocol 2-5 header (``0x80 0x02..0x05``), and zip
archives holding ``*.pkl`` members (``archive/data.pkl``, as ``torch.save`` writes them). Bytes
after a pickle that start with a protocol header are scanned as another pickle, and the legacy
(non-zip) ``torch.save`` format, recognised by its magic-number pickle, has all five of its
pickles scanned whatever their protocol.
``.safetensors`` files are never scanned: the format holds no code, and its first bytes (a
little-endian header length) may look like a pickle header.

Findings (:class:`modelkeep.hooks.Finding`, scanner ``modelkeep.scanner``), for a policy to match
on by code:

=========================  ========  ===============================================================
code                       severity  meaning
=========================  ========  ===============================================================
``pickle.file``            info      a pickle-based file; the message lists the callables it imports
``pickle.unsafe-global``   warning   it imports callables outside :data:`ALLOWED_GLOBALS`, named
``pickle.malformed``       warning   it is not a well-formed pickle; what came before was scanned
``pickle.scan-limit``      warning   it is larger than the scan limits; the rest was not scanned
=========================  ========  ===============================================================

The work is bounded: at most :data:`MAX_SCAN_BYTES` bytes of pickle data and :data:`MAX_OPCODES`
opcodes per pickle data read, at most :data:`MAX_PICKLES` pickles back to back and
:data:`MAX_ZIP_PICKLES` pickles per archive; a malformed or oversized file is a finding, never an
exception.

At register, :func:`modelkeep_collect_metadata` records a summary on the version as tags:
``modelkeep.scan`` (``clean``, ``pickle``, ``unsafe`` or ``incomplete``) and, when unsafe,
``modelkeep.scan.unsafe`` (the callables, comma-separated, truncated). A promotion gate should not
trust those tags (anyone who can write the registry can write them): :func:`scan_version` scans a
registered version again, reading its files through the store.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from modelkeep.hooks import Finding, hookimpl

if TYPE_CHECKING:
    from modelkeep.keep import Keep

SCANNER = "modelkeep.scanner"
CODE_FILE = "pickle.file"
CODE_UNSAFE = "pickle.unsafe-global"
CODE_MALFORMED = "pickle.malformed"
CODE_LIMIT = "pickle.scan-limit"

SCAN_TAG = "modelkeep.scan"
UNSAFE_TAG = "modelkeep.scan.unsafe"
MAX_TAG_CHARS = 1000

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib")
NEVER_SCANNED = (".safetensors",)

# Bounds on the work per file. State dicts of multi-GB models pickle to a few MiB and a few
# hundred thousand opcodes (the tensor data lives outside the pickle), so these are generous for
# real checkpoints and still bound a hostile file to about a second of CPU.
MAX_SCAN_BYTES = 64 << 20
MAX_OPCODES = 2_000_000
MAX_PICKLES = 16
MAX_ZIP_PICKLES = 64  # torch.save writes one (data.pkl), TorchScript two or three
MAX_NAMES_IN_MESSAGE = 20

# Callables that rebuild data and nothing else: what torch.save, numpy and the standard
# containers emit for weights. Everything else a pickle imports is reported as unsafe. Exact
# (module, name) pairs, never whole modules: ``torch`` alone would admit ``torch.load``.
_TORCH_REBUILD = (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
    "_rebuild_nested_tensor", "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor", "_rebuild_meta_tensor_no_storage",
    "_rebuild_wrapper_subclass",
)
_TORCH_STORAGES = (
    "UntypedStorage", "TypedStorage", "ByteStorage", "CharStorage", "ShortStorage", "IntStorage",
    "LongStorage", "HalfStorage", "FloatStorage", "DoubleStorage", "BFloat16Storage",
    "BoolStorage", "ComplexFloatStorage", "ComplexDoubleStorage", "QInt8Storage",
    "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage",
)
_TORCH_DTYPES = (
    "float16", "float32", "float64", "bfloat16", "half", "float", "double", "complex64",
    "complex128", "uint8", "int8", "int16", "int32", "int64", "bool", "qint8", "quint8", "qint32",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "uint16", "uint32",
    "uint64",
)
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("torch._utils", n) for n in _TORCH_REBUILD]
    + [("torch", n) for n in _TORCH_STORAGES + _TORCH_DTYPES]
    + [("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage"),
       ("torch", "Size"), ("torch", "device"), ("torch", "Tensor"),
       ("torch.nn.parameter", "Parameter"), ("torch._tensor", "_rebuild_from_type_v2"),
       ("torch", "strided"), ("torch", "sparse_coo"), ("torch", "per_tensor_affine"),
       ("torch", "per_channel_affine"),
       ("collections", "OrderedDict"), ("collections", "defaultdict"),
       ("collections", "Counter"), ("collections", "deque"),
       ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
       ("builtins", "complex"), ("builtins", "bytearray"), ("builtins", "range"),
       ("__builtin__", "set"), ("__builtin__", "frozenset"),
       ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
       ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
       ("datetime", "datetime"), ("datetime", "date"), ("datetime", "timedelta"),
       ("numpy", "dtype"), ("numpy", "ndarray"),
       ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
       ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
       ("numpy.dtypes", "Float16DType"), ("numpy.dtypes", "Float32DType"),
       ("numpy.dtypes", "Float64DType"), ("numpy.dtypes", "Int64DType"),
       ("numpy.dtypes", "Int32DType"), ("numpy.dtypes", "UInt8DType"),
       ("numpy.dtypes", "BoolDType")]
)
# Shown by their public name: pickle records os.system as posix.system (nt.system on Windows).
_ALIASES = {"posix": "os", "nt": "os", "__builtin__": "builtins"}

_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                         "SHORT_BINUNICODE", "BINUNICODE8"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_EXT_OPS = frozenset({"EXT1", "EXT2", "EXT4"})
_MARK = object()
_UNKNOWN = object()


class _Limit(Exception):
    """The scan budget of a file ran out."""


class _Malformed(Exception):
    """The bytes are not a well-formed pickle."""


class _Budget:
    """Opcodes left for one file (bytes are bounded by the window read, :func:`_scan_windows`)."""

    def __init__(self) -> None:
        self.opcodes = MAX_OPCODES


@dataclass
class ScanResult:
    """What scanning one file found."""

    path: str
    is_pickle: bool = False
    globals: list[str] = field(default_factory=list)  # every callable imported, in order, once
    unsafe: list[str] = field(default_factory=list)
    malformed: str | None = None
    limited: str | None = None
    _seen: set[str] = field(default_factory=set, repr=False)
    _allowed: list[bool] = field(default_factory=list, repr=False)

    def add_global(self, module: str, name: str) -> None:
        shown = display_name(module, name)
        if shown in self._seen:
            return
        self._seen.add(shown)
        self.globals.append(shown)
        allowed = is_allowed(module, name)
        self._allowed.append(allowed)
        if not allowed:
            self.unsafe.append(shown)

    def merge(self, other: ScanResult) -> None:
        """Add what scanning another part of the same file found."""
        self.is_pickle = self.is_pickle or other.is_pickle
        for shown, allowed in zip(other.globals, other._allowed, strict=True):
            if shown not in self._seen:
                self._seen.add(shown)
                self.globals.append(shown)
                self._allowed.append(allowed)
                if not allowed:
                    self.unsafe.append(shown)
        self.malformed = self.malformed or other.malformed
        self.limited = self.limited or other.limited

    def findings(self) -> list[Finding]:
        if not self.is_pickle:
            return []
        out = []
        imports = _names(self.globals) or "nothing"
        out.append(Finding(self.path, f"pickle file (loading it runs code); imports {imports}",
                           "info", SCANNER, CODE_FILE, tuple(self.globals)))
        if self.unsafe:
            out.append(Finding(
                self.path, f"pickle imports callables outside the allow-list: "
                f"{_names(self.unsafe)}; loading it can run arbitrary code", "warning", SCANNER,
                CODE_UNSAFE, tuple(self.unsafe)))
        if self.malformed:
            out.append(Finding(self.path, f"malformed pickle: {self.malformed}", "warning",
                               SCANNER, CODE_MALFORMED))
        if self.limited:
            out.append(Finding(self.path, f"pickle scan stopped: {self.limited}", "warning",
                               SCANNER, CODE_LIMIT))
        return out


def display_name(module: str, name: str) -> str:
    """``module.name`` with ``posix``/``nt`` shown as ``os`` (what the pickle author wrote)."""
    return f"{_ALIASES.get(module, module)}.{name}"


def is_allowed(module: str, name: str) -> bool:
    return (module, name) in ALLOWED_GLOBALS


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = len(names) - MAX_NAMES_IN_MESSAGE
    return f"{shown} and {more} more" if more > 0 else shown


# -- walking one pickle ---------------------------------------------------------------------------


def _pop(stack: list[Any], n: int) -> list[Any]:
    if n > len(stack):
        raise _Malformed("stack underflow")
    if n == 0:
        return []
    out = stack[-n:]
    del stack[-n:]
    return out


def _pop_mark(stack: list[Any]) -> None:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            del stack[i:]
            return
    raise _Malformed("no MARK on the stack")


def _walk(stream: io.BytesIO, budget: _Budget, result: ScanResult) -> None:
    """Replay the stack effects of one pickle's opcodes up to its STOP, recording imports."""
    import pickletools  # with zipfile, loaded by a scan, not by every command's plugins

    stack: list[Any] = []
    memo: dict[int, Any] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            budget.opcodes -= 1
            if budget.opcodes < 0:
                raise _Limit
            name = opcode.name
            if name in _STRING_OPS:
                stack.append(arg)
            elif name in _PUT_OPS or name == "MEMOIZE":
                if not stack:
                    raise _Malformed(f"{name} on an empty stack")
                memo[len(memo) if name == "MEMOIZE" else int(cast(int, arg))] = stack[-1]
            elif name in _GET_OPS:
                stack.append(memo.get(int(cast(int, arg)), _UNKNOWN))
            elif name == "DUP":
                if not stack:
                    raise _Malformed("DUP on an empty stack")
                stack.append(stack[-1])
            elif name == "MARK":
                stack.append(_MARK)
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                result.add_global(module, attr)
                if name == "INST":
                    _pop_mark(stack)
                stack.append(_UNKNOWN)
            elif name == "STACK_GLOBAL":
                module, attr = _pop(stack, 2)
                if isinstance(module, str) and isinstance(attr, str):
                    result.add_global(module, attr)
                else:  # computed at load time: cannot be judged without running it
                    result.add_global("<dynamic>", "STACK_GLOBAL")
                stack.append(_UNKNOWN)
            elif name in _EXT_OPS:
                result.add_global("<copyreg extension>", str(arg))
                stack.append(_UNKNOWN)
            elif name == "STOP":
                # pickle.load fails here too ("unpickling stack underflow"): nothing to return.
                if not stack or stack[-1] is _MARK:
                    raise _Malformed("STOP on an empty stack")
                return
            else:
                before, after = opcode.stack_before, opcode.stack_after
                if pickletools.markobject in before:
                    _pop_mark(stack)
                    _pop(stack, before.index(pickletools.markobject))
                else:
                    _pop(stack, len(before))
                stack.extend(_MARK if a is pickletools.markobject else _UNKNOWN for a in after)
        raise _Malformed("no STOP opcode")
    except (_Limit, _Malformed):
        raise
    except Exception as exc:  # genops: unknown opcode, truncated argument, bad encoding
        raise _Malformed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None


def _scan_pickles(data: bytes, budget: _Budget, result: ScanResult, where: str,
                  required: int = 1) -> str:
    """Scan consecutive pickles in *data*: the first *required* whatever their first bytes, then
    each one that starts with a protocol header. (A legacy torch.save file is five pickles, any
    of which torch.load unpickles, then raw tensor data.) Returns ``done``, or ``cut`` when a
    pickle ran into the end of *data`, or ``peek`` when *data* ends too soon after one to see
    whether another follows: then a longer window may say more."""
    # In memory, genops's reads of an opcode at a time are C calls rather than Python ones.
    stream = io.BytesIO(data)
    for index in range(MAX_PICKLES):
        known = len(result.globals)
        try:
            _walk(stream, budget, result)
        except _Malformed as exc:
            # Past the required pickles, bytes that merely start like a pickle header are data
            # (legacy torch storages) unless they imported something before breaking.
            if index < required or len(result.globals) > known:
                result.malformed = f"{where}{exc} at byte {stream.tell()}"
            return "cut" if stream.tell() >= len(data) else "done"
        if index + 1 < required:
            continue
        pos = stream.tell()
        if len(data) - pos < 2:
            return "peek"
        if not _looks_like_pickle(data[pos:pos + 2]):
            return "done"
    result.limited = f"{where}more than {MAX_PICKLES} consecutive pickles"
    return "done"


def _scan_windows(f: BinaryIO, head: bytes, result: ScanResult, where: str,
                  required: int = 1, max_bytes: int | None = None) -> int:
    """Scan the pickles at the start of *f* (after *head*, already read), reading a window that
    doubles from 1 MiB up to *max_bytes* (:data:`MAX_SCAN_BYTES`) until the scan ends inside it:
    a pickle of a few KiB followed by gigabytes of tensor data costs one small read. Returns the
    bytes read."""
    limit = MAX_SCAN_BYTES if max_bytes is None else max_bytes
    window = max(min(1 << 20, limit), len(head))
    data = head + _read_upto(f, window - len(head))
    while True:
        attempt = ScanResult(result.path, is_pickle=True)
        try:
            state = _scan_pickles(data, _Budget(), attempt, where, required)
        except _Limit:
            state = "done"
            attempt.limited = f"{where}more than {MAX_OPCODES} opcodes; later imports are unknown"
        at_end = len(data) < window  # the whole file is in memory: what it says is final
        if state == "done" or at_end:
            result.merge(attempt)
            return len(data)
        if window >= limit:
            attempt.malformed = None  # cut by the limit, not damaged
            attempt.limited = (f"{where}more than {MAX_SCAN_BYTES >> 20} MiB of pickle data; "
                               "later imports are unknown")
            result.merge(attempt)
            return len(data)
        more = min(window, limit - window)
        data += _read_upto(f, more)
        window += more


def _read_upto(f: BinaryIO, n: int) -> bytes:
    """Up to *n* bytes: fewer only at the end of *f*."""
    parts, left = [], n
    while left > 0:
        block = f.read(left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


# -- one file -------------------------------------------------------------------------------------


# The first pickle of a legacy (non-zip) torch.save file: its magic number, protocol 2. Four
# more pickles follow (format version, system info, the object, storage keys).
_LEGACY_TORCH = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_LEGACY_TORCH_PICKLES = 5


def _looks_like_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def scan_file(path: str, opener: Callable[[], BinaryIO]) -> ScanResult:
    """Scan one file (never raising for its content): *path* is its path in the version,
    *opener* opens it for binary reading (seekable, for zip archives)."""
    result = ScanResult(path)
    lower = path.lower()
    if lower.endswith(NEVER_SCANNED):
        return result
    # .bin is a pickle only by content: raw weights are named .bin too. The other names are
    # scanned whatever their first bytes (protocols 0 and 1 have no header).
    named = lower.endswith(PICKLE_SUFFIXES) and not lower.endswith(".bin")
    with opener() as raw:
        f: Any = raw
        head = _read_upto(f, len(_LEGACY_TORCH))
        if head[:4] == b"PK\x03\x04":
            _scan_zip(f, result, named or lower.endswith(".bin"))
            return result
        if not head or not (named or _looks_like_pickle(head)):
            return result
        result.is_pickle = True
        required = _LEGACY_TORCH_PICKLES if head == _LEGACY_TORCH else 1
        _scan_windows(f, head, result, "", required)
    return result


def _scan_zip(f: BinaryIO, result: ScanResult, named: bool) -> None:
    import zipfile

    try:
        f.seek(0)
        archive = zipfile.ZipFile(f)
        infos = archive.infolist()
    except Exception as exc:  # not a zip after all, or a damaged one
        if named:
            result.is_pickle = True
            result.malformed = f"damaged zip archive ({type(exc).__name__})"
        return
    members = [i for i in infos if i.filename.endswith(".pkl") and not i.is_dir()]
    if len(members) > MAX_ZIP_PICKLES:
        result.limited = f"archive holds more than {MAX_ZIP_PICKLES} pickles"
        members = members[:MAX_ZIP_PICKLES]
    left = MAX_SCAN_BYTES  # for the whole archive, not per member
    for info in members:
        result.is_pickle = True
        if left <= 0:
            result.limited = (f"more than {MAX_SCAN_BYTES >> 20} MiB of pickle data; later "
                              "imports are unknown")
            return
        try:
            with archive.open(info) as member:
                left -= _scan_windows(member, b"", result,  # type: ignore[arg-type]
                                      f"{info.filename}: ", max_bytes=left)
        except Exception as exc:  # decompression errors, bad CRC, encrypted members
            result.malformed = f"{info.filename}: {type(exc).__name__}: {exc}"


# -- summary tags ---------------------------------------------------------------------------------


def summary(findings: Iterable[Finding]) -> dict[str, str]:
    """The ``modelkeep.scan`` tags for a version's findings (this scanner's only)."""
    mine = [f for f in findings if f.scanner == SCANNER]
    codes = {f.code for f in mine}
    if CODE_UNSAFE in codes:
        verdict = "unsafe"
    elif codes & {CODE_MALFORMED, CODE_LIMIT}:
        verdict = "incomplete"
    elif CODE_FILE in codes:
        verdict = "pickle"
    else:
        verdict = "clean"
    tags = {SCAN_TAG: verdict}
    unsafe: list[str] = []
    for f in mine:
        if f.code == CODE_UNSAFE:
            unsafe.extend(n for n in f.names if n not in unsafe)
    if unsafe:
        text = ",".join(unsafe)
        tags[UNSAFE_TAG] = text if len(text) <= MAX_TAG_CHARS else text[:MAX_TAG_CHARS - 3] + "..."
    return tags


# -- scanning a registered version ----------------------------------------------------------------


def scan_version(keep: Keep, ref: str) -> list[Finding]:
    """Scan the files of registered version *ref* again, reading them through the store (only
    the chunks the scan reads are fetched): the same findings as at register. For a promotion
    gate, which should not trust the version's tags."""
    return [f for f in keep.scan(ref) if f.scanner == SCANNER]


# -- hooks ----------------------------------------------------------------------------------------


@hookimpl
def modelkeep_scan_file(path: str, opener: Callable[[], BinaryIO]) -> list[Finding]:
    return scan_file(path, opener).findings()


@hookimpl
def modelkeep_collect_metadata(findings: Sequence[Finding]) -> dict[str, str]:
    return summary(findings)


__all__ = [
    "ALLOWED_GLOBALS",
    "CODE_FILE",
    "CODE_LIMIT",
    "CODE_MALFORMED",
    "CODE_UNSAFE",
    "SCANNER",
    "ScanResult",
    "scan_file",
    "scan_version",
    "summary",
]
