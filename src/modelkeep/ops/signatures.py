"""Signatures: the Keep's signing key, the keys it trusts, and whether a version's snapshot
carries a good signature (:mod:`modelkeep.signing` does the cryptography)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from modelkeep.ops._common import load, resolve

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.signing import SignatureStatus, Signer


def signer(keep: Keep) -> Signer | None:
    """The loaded signing key, or None when this Keep does not sign."""
    if keep.signing_key is None or keep.signing_key == "":
        return None
    if keep._signer is None:
        from modelkeep.signing import Signer

        keep._signer = Signer.from_file(keep.signing_key)
    return keep._signer


def trusted_keys(keep: Keep, extra: Iterable[str | os.PathLike[str]] = ()) -> set[str]:
    """Ids of the trusted public keys: *extra* (files or key ids), ``MODELKEEP_TRUSTED_KEYS``
    and the signing key's own public key."""
    from modelkeep.signing import env_trusted_keys, trusted_key_ids

    ids = trusted_key_ids([*extra, *env_trusted_keys()])
    signer = keep.signer()
    if signer is not None:
        ids.add(signer.key_id)
    return ids


def signature_status(
    keep: Keep, ref: str, trusted_keys: Iterable[str | os.PathLike[str]] | None = None
) -> SignatureStatus:
    """Whether version *ref* carries a good signature by a trusted key: ``valid``,
    ``untrusted``, ``invalid`` or ``missing`` with the key id (:mod:`modelkeep.signing`).
    *trusted_keys* are public key files or key ids, added to :meth:`trusted_keys`."""
    from modelkeep.signing import judge

    rv = resolve(keep, ref)
    store, snap, sid = load(keep, rv)
    return judge(store, sid, rv.name, snap.name, keep.trusted_keys(trusted_keys or ()))


