"""Sign-in to a registry behind an OpenID provider (OAuth 2), and to the stores that take the
same identity: who modelkeep is, and the access tokens that say so.

- :mod:`~modelkeep.auth.settings`: the ``[auth]`` table of ``modelkeep.toml`` and the
  ``MODELKEEP_AUTH_*`` variables (issuer, client id, client secret from the environment or a
  file, scopes, audience).
- :mod:`~modelkeep.auth.provider`: the provider's metadata (OpenID discovery), fetched once per
  process.
- :mod:`~modelkeep.auth.tokens`: access tokens by the client-credentials grant (jobs) or from a
  ``modelkeep login`` (people), renewed before they expire with one renewal in flight per
  process; :class:`~modelkeep.auth.tokens.BearerAuth` puts them on requests and answers a 401
  with one renewal and one retry.
- :mod:`~modelkeep.auth.device`: the device authorization grant (RFC 8628) behind
  ``modelkeep login``.
- :mod:`~modelkeep.auth.tokenfile`: the file a login is kept in (mode 0600 under the user's config
  folder; a file others can read is refused).
- :mod:`~modelkeep.auth.stores`: the store option ``identity``, turned into the credential the
  store's filesystem takes; :mod:`~modelkeep.auth.azure` makes Azure Blob's (an azure-core token
  credential over the same tokens, or azure-identity's ``DefaultAzureCredential``),
  :mod:`~modelkeep.auth.s3` S3's (an IAM role assumed with the sign-in's token, STS
  ``AssumeRoleWithWebIdentity``, over aiobotocore's refreshable credentials).

The OAuth exchanges are authlib's (``pip install "modelkeep[auth]"``) and ID tokens are checked
with joserfc (authlib's own JOSE library); nothing here parses or signs a JWT by hand. No token or
secret is ever part of a message, a ``repr`` or a listing. This package imports nothing of
modelkeep but the errors leaf, the redaction helpers and the settings file reader
(:mod:`modelkeep.config`, for ``[auth]``), so every layer that talks to a server (the registry
adapter, the store options, the CLI) can use it.
"""
