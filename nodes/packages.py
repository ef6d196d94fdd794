"""Marketplace packages: metadata records stored in the DHT and bodies served by providers."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

from libp2p.records.validator import Validator

DHT_NAMESPACE = "market"


def dht_key(package_id: str) -> str:
    return f"/{DHT_NAMESPACE}/{package_id}"


def make_body(seed: int, package_id: str, size: int) -> bytes:
    """The package body, identical for every run with the same seed."""
    return random.Random(f"{seed}:body:{package_id}").randbytes(size)


def checksum(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Package:
    id: str
    name: str
    version: str
    description: str
    tags: list[str] = field(default_factory=list)
    size: int = 0
    sha256: str = ""
    publisher: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: dict) -> Package:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})

    @classmethod
    def from_json(cls, raw: bytes) -> Package:
        data = json.loads(raw)
        missing = {"id", "name", "version", "sha256"} - set(data)
        if missing:
            raise ValueError(f"package record lacks {sorted(missing)}")
        return cls.from_dict(data)

    def matches(self, terms: list[str]) -> bool:
        """Every term appears in the name, description or tags."""
        text = " ".join([self.name, self.description, *self.tags]).lower()
        return all(term in text for term in terms)


def query_terms(query: str) -> list[str]:
    return [term for term in query.lower().split() if term]


class PackageRecordValidator(Validator):
    """DHT validator for /market/ records: a record must be a well-formed package."""

    def validate(self, key: str, value: bytes) -> None:
        package = Package.from_json(value)
        if dht_key(package.id) != key:
            raise ValueError(f"record for {package.id} stored under {key}")

    def select(self, key: str, values: list[bytes]) -> int:
        return 0
