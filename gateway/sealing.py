"""Sealed secrets: public-key encryption so that API keys can live in git.

Anyone with the public key (`seal.pub`, safe to commit) can seal a value;
only a gateway holding the matching private key (`seal.key`, a Kubernetes
Secret) can unseal it.

Scheme (hybrid, one fresh X25519 key pair per sealed value):

    shared = X25519(ephemeral_private, recipient_public)
    key    = HKDF-SHA256(shared, salt=none,
                         info="gateway-seal:v1:" || ephemeral_pub || recipient_pub)
    ct     = AES-256-GCM(key, nonce, plaintext, aad="sealed:v1:<kid>:<scope>")

Envelope (one line, YAML-safe, no quoting needed):

    sealed:v1:<kid>:<scope>:<base64url(ephemeral_pub[32] || nonce[12] || ct+tag)>

`kid` is the first 8 bytes of SHA-256 of the recipient's raw public key, in
hex: it picks the private key when several are loaded (rotation) and lets an
error say which key a value needs. `scope` (provider name, `auth` or `admin`)
is in clear so that a value pasted into the wrong place gets an error that
says so; it is also bound as associated data, so editing it to match breaks
the authentication tag. The whole header is associated data, so no part of
the envelope can be changed without unsealing failing.

Key files are one line of text, not PEM: `gateway-seal-key:v1:<base64url>`
(private, raw 32 bytes) and `gateway-seal-pub:v1:<base64url>` (public).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .config import NAME_RE
from .secrets import SecretError

PREFIX = "sealed:v1:"
PRIVATE_PREFIX = "gateway-seal-key:v1:"
PUBLIC_PREFIX = "gateway-seal-pub:v1:"
KID_RE = re.compile(r"^[0-9a-f]{16}$")
_B64_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NONCE_LEN = 12
_TAG_LEN = 16
_KEY_LEN = 32
ENVELOPE_HELP = "sealed:v1:KEY_ID:SCOPE:DATA"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict base64url without padding: None unless `text` is the canonical encoding.

    The canonical check matters: a lenient decoder ignores the unused low
    bits of the last character, so two different texts would unseal alike.
    """
    if not _B64_RE.match(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64encode(data) == text else None


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _aad(kid: str, scope: str) -> bytes:
    return f"{PREFIX}{kid}:{scope}".encode("ascii")


def _derive(shared: bytes, ephemeral_pub: bytes, recipient_pub: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_LEN,
        salt=None,
        info=b"gateway-seal:v1:" + ephemeral_pub + recipient_pub,
    )
    return hkdf.derive(shared)


def check_scope(scope: str) -> None:
    """Scopes are provider names (slugs), `auth` or `admin`: the same alphabet."""
    if not isinstance(scope, str) or not NAME_RE.match(scope):
        raise SecretError(
            f"invalid scope {scope!r}: use the provider's name, 'auth' or 'admin' "
            "(lowercase letters, digits, '-' and '_')"
        )


def _check_plaintext(plaintext: str) -> bytes:
    if not isinstance(plaintext, str) or not plaintext:
        raise SecretError("refusing to seal an empty secret")
    if any(c in plaintext for c in "\r\n\0"):
        # A key with a line break is almost always a paste mistake, and it
        # could never be sent in an HTTP header anyway.
        raise SecretError("refusing to seal a secret that contains a line break or NUL")
    if plaintext.startswith(PREFIX):
        raise SecretError("the input is already a sealed value")
    return plaintext.encode("utf-8")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A recipient's public key: enough to seal, never to unseal."""

    raw: bytes

    @property
    def kid(self) -> str:
        return key_id(self.raw)

    @property
    def text(self) -> str:
        """The `seal.pub` file's content (without the newline)."""
        return PUBLIC_PREFIX + _b64encode(self.raw)

    def seal(self, plaintext: str, scope: str) -> str:
        """Seal `plaintext` for `scope`; returns `sealed:v1:...`."""
        check_scope(scope)
        data = _check_plaintext(plaintext)
        ephemeral = X25519PrivateKey.generate()
        eph_pub = ephemeral.public_key().public_bytes(_RAW, _RAW_PUB)
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self.raw))
        key = _derive(shared, eph_pub, self.raw)
        nonce = secrets.token_bytes(_NONCE_LEN)
        kid = self.kid
        ct = AESGCM(key).encrypt(nonce, data, _aad(kid, scope))
        return f"{PREFIX}{kid}:{scope}:{_b64encode(eph_pub + nonce + ct)}"


def parse_public_key(text: str, source: str = "public key") -> PublicKey:
    line = text.strip()
    if line.startswith(PRIVATE_PREFIX):
        # Say so without echoing it: a private key was just put where a
        # public one belongs, perhaps on its way into git.
        raise SecretError(
            f"{source}: this is a PRIVATE key; sealing needs only the public key (seal.pub)"
        )
    raw = _b64decode(line[len(PUBLIC_PREFIX) :]) if line.startswith(PUBLIC_PREFIX) else None
    if raw is None or len(raw) != _KEY_LEN:
        raise SecretError(
            f"{source}: not a gateway public key (expected one line '{PUBLIC_PREFIX}...', "
            "as written by `gateway keygen`)"
        )
    try:
        X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SecretError(f"{source}: not a valid X25519 public key") from None
    return PublicKey(raw)


def _read_key_file(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise SecretError(f"key file {path} not found") from None
    except IsADirectoryError:
        raise SecretError(f"key file {path} is a directory") from None
    except PermissionError:
        raise SecretError(f"key file {path} is not readable (permission denied)") from None
    except OSError as exc:
        raise SecretError(f"key file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SecretError(f"key file {path} is not a gateway key (not ASCII text)") from None


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a `seal.pub` file. Raises SecretError."""
    path = Path(path)
    return parse_public_key(_read_key_file(path), str(path))


def _parse_private_key(text: str, source: str) -> X25519PrivateKey:
    line = text.strip()
    if line.startswith(PUBLIC_PREFIX):
        raise SecretError(
            f"{source}: this is a public key; unsealing needs the private key (seal.key)"
        )
    raw = _b64decode(line[len(PRIVATE_PREFIX) :]) if line.startswith(PRIVATE_PREFIX) else None
    if raw is None or len(raw) != _KEY_LEN:
        # Never quote the content: it may be a mangled private key.
        raise SecretError(
            f"{source}: not a gateway private key (expected one line '{PRIVATE_PREFIX}...', "
            "as written by `gateway keygen`)"
        )
    return X25519PrivateKey.from_private_bytes(raw)


def generate_keypair() -> tuple[str, str]:
    """A new key pair as (private key file text, public key file text), newline-ended."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption())
    pub = PublicKey(private.public_key().public_bytes(_RAW, _RAW_PUB))
    return f"{PRIVATE_PREFIX}{_b64encode(raw)}\n", f"{pub.text}\n"


def _write_new(path: Path, text: str, mode: int) -> None:
    """Write a file that must not exist yet, atomically: all of it or nothing.

    The content goes to a private temp file first, then is hard-linked into
    place: link() fails if the name exists, so a key is never overwritten,
    even by a concurrent keygen, and no half-written key is ever visible.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have taken bits away; never adds any
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_keypair(directory: str | os.PathLike[str], name: str = "seal") -> tuple[Path, Path, str]:
    """Create `NAME.key` (0600) and `NAME.pub` (0644) in `directory`.

    Returns (private path, public path, key id). Raises FileExistsError if
    either file exists: overwriting a private key would lose every value
    sealed for it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise FileExistsError(f"{p} already exists; refusing to overwrite a key")
    private_text, public_text = generate_keypair()
    _write_new(key_path, private_text, 0o600)
    try:
        _write_new(pub_path, public_text, 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)  # the pair is written whole or not at all
        raise
    return key_path, pub_path, parse_public_key(public_text).kid


@dataclass(frozen=True, slots=True)
class _Entry:
    kid: str
    private: X25519PrivateKey
    public: PublicKey
    source: str

    def __repr__(self) -> str:
        return f"_Entry(kid={self.kid!r}, source={self.source!r})"


class Keyring:
    """The private keys a gateway unseals with: one, or several during a rotation.

    The first key is the primary: `seal()` and `public_key_text` use it (the
    admin API seals new provider keys with it). Every loaded key unseals.
    """

    __slots__ = ("_by_kid", "_primary")

    def __init__(self, entries: Iterable[_Entry]):
        by_kid: dict[str, _Entry] = {}
        for entry in entries:
            by_kid.setdefault(entry.kid, entry)  # the same key twice is harmless
        if not by_kid:
            raise SecretError("no private keys to load")
        self._by_kid = by_kid
        self._primary = next(iter(by_kid.values()))

    @classmethod
    def from_private_texts(cls, texts: Iterable[tuple[str, str]]) -> Keyring:
        """From (source label, private key file text) pairs, primary first."""
        entries = []
        for source, text in texts:
            private = _parse_private_key(text, source)
            public = PublicKey(private.public_key().public_bytes(_RAW, _RAW_PUB))
            entries.append(_Entry(public.kid, private, public, source))
        return cls(entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load a key file, or every `*.key` file in a directory. Raises SecretError.

        In a directory the key whose file name sorts LAST is the primary, so
        that date-named keys (`seal-2025-01.key`, `seal-2025-07.key`) make
        the newest one seal. Hidden files are skipped: a Kubernetes Secret
        volume keeps its real files under `..data`-style hidden entries.
        """
        path = Path(path)
        if path.is_dir():
            try:
                files = sorted(
                    (
                        p
                        for p in path.iterdir()
                        if p.suffix == ".key" and not p.name.startswith(".")
                    ),
                    reverse=True,
                )
            except OSError as exc:
                raise SecretError(f"key directory {path} cannot be read: {exc.strerror}") from None
            if not files:
                raise SecretError(f"key directory {path} holds no *.key file")
        else:
            files = [path]
        return cls.from_private_texts((str(p), _read_key_file(p)) for p in files)

    @property
    def kids(self) -> tuple[str, ...]:
        """Key ids, primary first."""
        return tuple(self._by_kid)

    @property
    def public_key(self) -> PublicKey:
        return self._primary.public

    @property
    def public_key_text(self) -> str:
        """The primary key's public key, as a `seal.pub` file holds it."""
        return self._primary.public.text

    def seal(self, plaintext: str, scope: str) -> str:
        """Seal for this gateway's primary key."""
        return self._primary.public.seal(plaintext, scope)

    def unseal(self, sealed: str, scope: str) -> str:
        """Plain text of `sealed`, which must have been sealed for `scope`.

        Raises SecretError with a message that says what is wrong (format,
        scope, key id, altered value) and never contains the secret.
        """
        if not isinstance(sealed, str) or not sealed.startswith("sealed:"):
            raise SecretError(f"not a sealed value (expected {ENVELOPE_HELP})")
        parts = sealed.split(":")
        if parts[1] != "v1":
            version = parts[1] if re.match(r"^v[0-9]{1,3}$", parts[1]) else "?"
            raise SecretError(
                f"sealed value version '{version}' is not supported (this gateway reads v1)"
            )
        if len(parts) != 5:
            raise SecretError(f"malformed sealed value (expected {ENVELOPE_HELP})")
        _, _, kid, sealed_scope, payload = parts
        if not KID_RE.match(kid):
            raise SecretError(f"malformed sealed value: bad key id (expected {ENVELOPE_HELP})")
        if not NAME_RE.match(sealed_scope):
            raise SecretError(f"malformed sealed value: bad scope (expected {ENVELOPE_HELP})")
        if sealed_scope != scope:
            raise SecretError(
                f"sealed for scope '{sealed_scope}', not '{scope}': a value sealed for one "
                f"place cannot be used in another; seal it again with `gateway seal --scope {scope}`"
            )
        entry = self._by_kid.get(kid)
        if entry is None:
            loaded = ", ".join(self._by_kid)
            raise SecretError(
                f"sealed with key id '{kid}', but no loaded private key has that id "
                f"(loaded: {loaded}); load that key or seal the value again"
            )
        data = _b64decode(payload)
        if data is None or len(data) < _KEY_LEN + _NONCE_LEN + _TAG_LEN + 1:
            raise SecretError("cannot unseal: the value is corrupt or was altered (bad encoding)")
        eph_pub = data[:_KEY_LEN]
        nonce = data[_KEY_LEN : _KEY_LEN + _NONCE_LEN]
        ct = data[_KEY_LEN + _NONCE_LEN :]
        try:
            shared = entry.private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
            key = _derive(shared, eph_pub, entry.public.raw)
            plain = AESGCM(key).decrypt(nonce, ct, _aad(kid, scope))
        except (InvalidTag, ValueError):
            # ValueError: an all-zero shared secret from a crafted ephemeral key.
            raise SecretError(
                "cannot unseal: the value is corrupt or was altered (authentication failed)"
            ) from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError("cannot unseal: the plain text is not UTF-8") from None

    def __repr__(self) -> str:
        return f"Keyring(kids={list(self._by_kid)!r})"
