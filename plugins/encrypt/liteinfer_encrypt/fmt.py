"""The .lienc format: a model encrypted with AES-256-GCM in chunks, under an authenticated header.

    offset 0    header, 84 bytes (little-endian):
                  magic    6s  b"LIENC\\0"
                  version  H   1
                  format   8s  b"gguf" / b"onnx" (NUL-padded): what the clear model is
                  chunk    I   clear bytes per chunk (the last one may be shorter)
                  n_chunks Q
                  size     Q   clear model bytes
                  sha256   32s of the clear model
                  salt     16s random, per file
    offset 84   header tag, 16 bytes: GCM over no data, the header as associated data
    offset 100  chunk 0 ciphertext + its 16-byte tag, chunk 1, ... (n_chunks of them)

The file key is HKDF-SHA256(master key, salt, "liteinfer-encrypt v1"), so one master key can
encrypt many models with no nonce shared between them. Chunk i uses the nonce i (12 bytes,
big-endian) and the associated data header || i || last-flag: a wrong key fails at the header
tag, a changed byte fails its chunk's tag, a chunk moved elsewhere fails (its index is bound),
and a file cut short is caught by the sizes the authenticated header gives (and by the
last-flag, were the sizes not checked). The clear bytes' SHA-256 is checked against the
header's by `decrypt`, and at load when plugins.encrypt.verify_hash is set (a second check:
the chunks' tags already cover every byte).

Every failure is a LiteInferError of one line; nothing is written anywhere but the memory
file (or, for `decrypt`, the output once the whole model has authenticated).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from liteinfer.core.errors import LiteInferError

MAGIC = b"LIENC\0"
VERSION = 1
HEADER = struct.Struct("<6sH8sIQQ32s16s")
TAG = 16
HEADER_NONCE = b"\xff" * 12  # never a chunk's: chunk indexes stay far below 2**96 - 1
DEFAULT_CHUNK = 4 << 20
KEY_BYTES = 32
FORMATS = ("gguf", "onnx")


@dataclass(frozen=True)
class Header:
    format: str
    chunk: int
    n_chunks: int
    size: int
    sha256: bytes
    salt: bytes
    raw: bytes  # the 84 bytes as stored: associated data of every tag

    @property
    def file_size(self) -> int:
        return HEADER.size + TAG + self.size + self.n_chunks * TAG

    def chunk_len(self, i: int) -> int:
        return self.chunk if i < self.n_chunks - 1 else self.size - self.chunk * (self.n_chunks - 1)

    def aad(self, i: int) -> bytes:
        return self.raw + i.to_bytes(8, "big") + (b"\x01" if i == self.n_chunks - 1 else b"\x00")


def _cipher(key: bytes, salt: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        raise LiteInferError(f"a model key is {KEY_BYTES} bytes, this one is {len(key)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=b"liteinfer-encrypt v1")
    return AESGCM(hkdf.derive(key))


def _nonce(i: int) -> bytes:
    return i.to_bytes(12, "big")


# ---------------------------------------------------------------- keys


def new_key(path: str | os.PathLike) -> bytes:
    """A fresh random key written to `path` as 64 hex digits, mode 0600; never over a file."""
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise LiteInferError(f"{path} exists: --new-key never overwrites a key (a model it encrypted "
                             "could not be opened again)") from None
    try:
        os.write(fd, key.hex().encode() + b"\n")
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return key


def parse_key(data: bytes, where: str) -> bytes:
    """32 raw bytes, or 64 hex digits, or base64 of 32 bytes (surrounding whitespace ignored)."""
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    try:
        if len(text) == 2 * KEY_BYTES:
            return bytes.fromhex(text.decode("ascii"))
        decoded = base64.b64decode(text, validate=True)
        if len(decoded) == KEY_BYTES:
            return decoded
    except (ValueError, UnicodeDecodeError, binascii.Error):
        pass
    # the message never shows the key's bytes, only their count
    raise LiteInferError(f"{where}: not a model key (want {KEY_BYTES} bytes as 64 hex digits, base64 or raw; "
                         f"got {len(text)} characters)")


def read_key_file(path: str | os.PathLike) -> tuple[bytes, str | None]:
    """(key, a warning or None): a key file that others may read is a warning, not a refusal."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise LiteInferError(f"key file {p} not found") from None
    except IsADirectoryError:
        raise LiteInferError(f"key file {p} is a folder") from None
    except PermissionError:
        raise LiteInferError(f"key file {p}: permission denied") from None
    warning = None
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and stat.S_ISREG(mode):
        warning = f"key file {p} can be read by other users (chmod 600 {p})"
    return parse_key(data, f"key file {p}"), warning


# ---------------------------------------------------------------- encrypting


def sniff_format(path: Path) -> str:
    """"gguf" or "onnx" from the file's first bytes (and .onnx's name); anything else is refused."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return "gguf"
    # an ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08
    if path.suffix == ".onnx" and head[:1] == b"\x08":
        return "onnx"
    raise LiteInferError(f"{path}: neither a GGUF nor an ONNX model (encrypt takes one .gguf or .onnx file)")


def _sha256_file(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.digest()


def encrypt_file(src: Path, out, key: bytes, chunk: int = DEFAULT_CHUNK) -> Header:
    """Encrypt `src` into the open binary file `out`; returns the header written."""
    fmt = sniff_format(src)
    size = src.stat().st_size
    if size == 0:
        raise LiteInferError(f"{src} is empty")
    if not 4096 <= chunk <= 1 << 30:
        raise LiteInferError(f"chunk size {chunk}: between 4 KiB and 1 GiB")
    n = -(-size // chunk)
    salt, digest = os.urandom(16), _sha256_file(src)
    raw = HEADER.pack(MAGIC, VERSION, fmt.encode().ljust(8, b"\0"), chunk, n, size, digest, salt)
    header = Header(fmt, chunk, n, size, digest, salt, raw)
    aes = _cipher(key, salt)
    out.write(raw)
    out.write(aes.encrypt(HEADER_NONCE, b"", raw))
    with open(src, "rb") as f:
        for i in range(n):
            data = f.read(header.chunk_len(i))
            if len(data) != header.chunk_len(i):
                raise LiteInferError(f"{src} changed while it was being encrypted")
            out.write(aes.encrypt(_nonce(i), data, header.aad(i)))
        if f.read(1):
            raise LiteInferError(f"{src} changed while it was being encrypted")
    return header


# ---------------------------------------------------------------- decrypting


def read_header(f, src: Path, key: bytes) -> tuple[Header, AESGCM]:
    """Parse and authenticate the header of an open .lienc file; check the file's size."""
    raw = f.read(HEADER.size)
    if len(raw) < 6 or raw[:6] != MAGIC:
        raise LiteInferError(f"{src}: not a liteinfer encrypted model")
    if len(raw) < HEADER.size:
        raise LiteInferError(f"{src}: truncated ({len(raw)} bytes, the header alone is {HEADER.size})")
    magic, version, fmt, chunk, n, size, digest, salt = HEADER.unpack(raw)
    if version != VERSION:
        raise LiteInferError(f"{src}: format version {version}, this liteinfer-encrypt reads {VERSION}")
    aes = _cipher(key, salt)
    tag = f.read(TAG)
    try:
        aes.decrypt(HEADER_NONCE, tag, raw)
    except InvalidTag:
        raise LiteInferError(f"{src}: wrong key (or a damaged header)") from None
    header = Header(fmt.rstrip(b"\0").decode("ascii", "replace"), chunk, n, size, digest, salt, raw)
    if header.format not in FORMATS:
        raise LiteInferError(f"{src}: holds a {header.format!r} model, this version knows {', '.join(FORMATS)}")
    have = os.fstat(f.fileno()).st_size
    if have < header.file_size:
        raise LiteInferError(f"{src}: truncated ({have} of {header.file_size} bytes)")
    if have > header.file_size:
        raise LiteInferError(f"{src}: {have - header.file_size} unexpected bytes after the last chunk")
    return header, aes


def peek(src: Path, key: bytes) -> Header:
    """The authenticated header (wrong key, wrong size and foreign files fail here, cheaply)."""
    with _open(src) as f:
        return read_header(f, src, key)[0]


def _open(src: Path):
    try:
        return open(src, "rb")
    except FileNotFoundError:
        raise LiteInferError(f"model file not found: {src}") from None
    except IsADirectoryError:
        raise LiteInferError(f"{src} is a folder, not an encrypted model") from None


def decrypt_into(src: Path, key: bytes, fd: int, verify_hash: bool = True) -> Header:
    """Decrypt `src` into the empty file `fd` (a memfd), authenticating every chunk: straight
    from a mapping of `src` into a mapping of `fd` (no copy between), one chunk at a time."""
    with _open(src) as f:
        header, aes = read_header(f, src, key)
        try:  # the pages now: no room is an error here, not a SIGBUS while writing the mapping
            os.posix_fallocate(fd, 0, header.size)
        except OSError as e:
            raise LiteInferError(f"{src}: no memory for the clear model ({header.size / 1e6:.0f} MB): "
                                 f"{e.strerror}") from None
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as sm, mmap.mmap(fd, header.size) as om:
            with memoryview(sm) as sv, memoryview(om) as ov:
                _decrypt_chunks(src, header, aes, sv, ov, verify_hash)
    return header


def _decrypt_chunks(src: Path, header: Header, aes: AESGCM, sv: memoryview, ov: memoryview,
                    verify_hash: bool) -> None:
    """Every chunk into its place in `ov`, in file order (two threads measured no faster on a busy
    two-core machine: the copy into fresh memfd pages costs as much as the cipher)."""
    into = hasattr(aes, "decrypt_into")  # a newer cryptography decrypts straight into the mapping
    pos = HEADER.size + TAG
    for i in range(header.n_chunks):
        n, at = header.chunk_len(i), i * header.chunk
        try:
            if into:
                aes.decrypt_into(_nonce(i), sv[pos:pos + n + TAG], header.aad(i), ov[at:at + n])
            else:  # an older cryptography: one copy more
                ov[at:at + n] = aes.decrypt(_nonce(i), sv[pos:pos + n + TAG], header.aad(i))
        except InvalidTag:
            raise LiteInferError(f"{src}: chunk {i + 1} of {header.n_chunks} does not authenticate "
                                 "(the file was altered, damaged or its chunks reordered)") from None
        pos += n + TAG
    # every chunk authenticated under the authenticated header already: the hash is a second check
    if verify_hash and hashlib.sha256(ov).digest() != header.sha256:
        raise LiteInferError(f"{src}: the decrypted model does not match the hash in its header")


def memfd(name: str = "liteinfer-model") -> int:
    """An anonymous memory-backed file (never on a disk file system; swap aside: docs/security.md)."""
    if not hasattr(os, "memfd_create"):
        raise LiteInferError("encrypted models need Linux (memfd_create) to stay off the disk")
    return os.memfd_create(name, os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0))


def seal(fd: int) -> None:
    """No more writes, growth or shrinking: what the engine maps is what was authenticated."""
    import fcntl  # Linux only, like memfd itself: imported where a memfd exists

    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                    | fcntl.F_SEAL_SEAL)
    except (AttributeError, OSError):
        pass  # an old kernel without seals: the memfd is still private to this process


def decrypt_to_memfd(src: Path, key: bytes, verify_hash: bool = True) -> tuple[int, Header]:
    """(memfd holding the clear model, its header); the fd is the caller's to close."""
    fd = memfd()
    try:
        header = decrypt_into(src, key, fd, verify_hash)
        seal(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd, header
