"""Access tokens of `fedmol serve`: where they come from (a file and/or an environment variable).

Light on purpose (no FastAPI): `fedmol --help` names the variable without importing the service.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedmol.errors import InputError

__all__ = ["TOKENS_ENV", "load_tokens"]

TOKENS_ENV = "FEDMOL_SERVE_TOKENS"


def load_tokens(tokens_file: str | Path | None, env: str = TOKENS_ENV) -> frozenset[str]:
    """Tokens from ``tokens_file`` (one per line, # comments) and/or the environment variable ``env``."""
    tokens: set[str] = set()
    if tokens_file:
        path = Path(tokens_file)
        if not path.exists():
            raise InputError(f"tokens file {path} not found")
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                tokens.add(line)
    tokens.update(t.strip() for t in os.environ.get(env, "").split(",") if t.strip())
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise InputError(f"{len(short)} access token(s) shorter than 16 characters: use long random tokens "
                         "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return frozenset(tokens)
