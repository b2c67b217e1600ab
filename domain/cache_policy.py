"""What may be answered from the cache: the scope of an entry and its keys. Whether a cached
prompt asks the same question as a new one is `domain.same_question`'s."""

from __future__ import annotations

import hashlib
import json
import uuid

from domain.model import InferenceRequest

_NAMESPACE = uuid.UUID("6f1c7e4e-2f8b-4c83-9d55-0b1a3f2e9a10")


def cache_scope(request: InferenceRequest, provider: str, embedder: str) -> str:
    """The hard filter of a cache entry: everything but the last user turn that changes the
    answer (provider, model, tenant, system prompt, earlier turns, generation parameters) and
    the embedder whose vectors are compared."""
    context = [(m.role.value, m.content) for m in request.messages[:-1]]
    material = json.dumps(
        [provider, request.model, request.tenant, context, request.temperature, request.max_tokens,
         embedder],
        ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(material.encode()).hexdigest()


def entry_key(scope: str, prompt: str) -> str:
    """The exact-tier key: the scope and the last user turn, byte for byte (code and YAML that
    differ only in indentation are different prompts)."""
    return hashlib.sha256(f"{scope}\n{prompt}".encode()).hexdigest()


def point_id(key: str) -> str:
    """A UUID for the vector index, derived from the entry key (re-stores overwrite)."""
    return str(uuid.uuid5(_NAMESPACE, key))
