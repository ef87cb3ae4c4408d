"""The loaded policy bundle: one immutable object the decision engine reads.

A :class:`PolicyBundle` is built only by :func:`gateway.policy.loader.load_bundle`, from a
bundle that passed every check. Its ``version`` is the SHA-256 of the bundle's canonical
content (:func:`canonical_content`): the validated documents as JSON with sorted keys and no
whitespace, plus the zone GeoJSON parsed and re-serialised the same way. So comments,
formatting, key order and the spelling of a value (``50`` or ``50.0``, a quoted or plain
string) do not change the version; any change of meaning does. Every audit entry records it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.geo.zones import ZoneSet
from gateway.policy.rules import RuleId
from gateway.policy.schema import (
    Consent,
    ConsentsDoc,
    FieldCategory,
    FieldsDoc,
    FieldSpec,
    RulesDoc,
    RuleSpec,
    Subscriber,
    SubscribersDoc,
)

__all__ = [
    "BUNDLE_SCHEMA",
    "PolicyBundle",
    "bundle_version",
    "canonical_chunks",
    "canonical_content",
]

BUNDLE_SCHEMA = "icvgw.policy/1"
"""Format tag of the bundle files; part of the hashed content."""


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_SPLIT_DEPTH = 3
"""Containers this deep or shallower are written piece by piece (a bundle's top level, its
documents, their lists of zones or consents); each deeper value is one ``json`` call."""


def canonical_content(
    fields: FieldsDoc,
    subscribers: SubscribersDoc,
    consents: ConsentsDoc,
    rules: RulesDoc,
    zones_geojson: Any,
) -> bytes:
    """The bytes the version hashes: validated documents and zones as canonical JSON."""
    return b"".join(canonical_chunks(fields, subscribers, consents, rules, zones_geojson))


def canonical_chunks(
    fields: FieldsDoc,
    subscribers: SubscribersDoc,
    consents: ConsentsDoc,
    rules: RulesDoc,
    zones_geojson: Any,
) -> Iterator[bytes]:
    """:func:`canonical_content` in pieces that join to the same bytes, so the version can
    be hashed without holding the whole text (as one string plus its encoding, a large zone
    file made a memory peak: ``bench/RESULTS.md``, peak RSS)."""
    content = {
        "schema": BUNDLE_SCHEMA,
        "fields": fields.model_dump(mode="json"),
        "subscribers": subscribers.model_dump(mode="json"),
        "consents": consents.model_dump(mode="json"),
        "rules": rules.model_dump(mode="json"),
        "zones": zones_geojson,
    }
    for text in _pieces(content, _SPLIT_DEPTH):
        yield text.encode("utf-8")


def _pieces(value: Any, depth: int) -> Iterator[str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` in
    pieces. Keys are strings here (parsed JSON, validated documents dumped as JSON)."""
    if depth and isinstance(value, dict):
        if any(not isinstance(key, str) for key in value):
            yield _CANONICAL.encode(value)  # json.dumps' own rules for such keys
            return
        sep = "{"
        for key in sorted(value):
            yield sep + _CANONICAL.encode(key) + ":"
            yield from _pieces(value[key], depth - 1)
            sep = ","
        yield "}" if sep == "," else "{}"
    elif depth and isinstance(value, list | tuple):
        sep = "["
        for item in value:
            yield sep
            yield from _pieces(item, depth - 1)
            sep = ","
        yield "]" if sep == "," else "[]"
    else:
        yield _CANONICAL.encode(value)


def bundle_version(content: bytes | Iterable[bytes]) -> str:
    """The version of a bundle: lower-case hex SHA-256 of its canonical content, given
    whole or in pieces."""
    digest = hashlib.sha256()
    for piece in [content] if isinstance(content, bytes) else content:
        digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True, eq=False)
class PolicyBundle:
    """A validated policy bundle. Immutable: every mapping is a read-only view.

    * ``fields``: VSS path -> :class:`~gateway.policy.schema.FieldSpec`
    * ``aliases``: OEM name -> VSS path
    * ``purposes``: purpose id -> description
    * ``subscribers``: subscriber id -> :class:`~gateway.policy.schema.Subscriber`, in file order
    * ``consents``: the seed consents, in file order
    * ``rules``: thresholds, defaults and the rule catalogue
    * ``zones``: the restricted zones (:class:`gateway.geo.zones.ZoneSet`)
    * ``version``: hex SHA-256 of the canonical content
    """

    directory: Path
    version: str
    fields: Mapping[str, FieldSpec]
    aliases: Mapping[str, str]
    purposes: Mapping[str, str]
    subscribers: Mapping[str, Subscriber]
    consents: tuple[Consent, ...]
    rules: RulesDoc
    zones: ZoneSet

    @classmethod
    def build(
        cls,
        directory: Path,
        fields: FieldsDoc,
        subscribers: SubscribersDoc,
        consents: ConsentsDoc,
        rules: RulesDoc,
        zones: ZoneSet,
        zones_geojson: Any,
    ) -> PolicyBundle:
        """Assemble a bundle from checked documents; computes the version."""
        pieces = canonical_chunks(fields, subscribers, consents, rules, zones_geojson)
        return cls(
            directory=directory,
            version=bundle_version(pieces),
            fields=MappingProxyType(dict(fields.fields)),
            aliases=MappingProxyType(dict(fields.aliases)),
            purposes=MappingProxyType(dict(subscribers.purposes)),
            subscribers=MappingProxyType({s.id: s for s in subscribers.subscribers}),
            consents=consents.consents,
            rules=rules,
            zones=zones,
        )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled with plain dicts for its read-only mappings (a bundle loaded in a child
        process comes back this way)."""
        return _restore, (
            self.directory,
            self.version,
            dict(self.fields),
            dict(self.aliases),
            dict(self.purposes),
            dict(self.subscribers),
            self.consents,
            self.rules,
            self.zones,
        )

    @property
    def short_version(self) -> str:
        """The first 12 hex digits of the version, for people."""
        return self.version[:12]

    def resolve(self, name: str) -> str | None:
        """The VSS path of a signal name (a path or an alias), or ``None`` if unclassified."""
        if name in self.fields:
            return name
        return self.aliases.get(name)

    def category(self, name: str) -> FieldCategory | None:
        """Category of a signal name (path or alias); ``None`` means unclassified: drop it."""
        path = self.resolve(name)
        return self.fields[path].category if path is not None else None

    def allowed_fields(self, subscriber_id: str) -> frozenset[str]:
        """VSS paths the subscriber's view allows: its categories' fields plus named fields.

        Allowed is the most a view may carry; the decision engine may still coarsen or
        remove any of them (zones, consent, cross-border rules). Raises ``KeyError`` for an
        unknown subscriber.
        """
        view = self.subscribers[subscriber_id].view
        categories = set(view.categories)
        by_category = {p for p, spec in self.fields.items() if spec.category in categories}
        return frozenset(by_category | set(view.fields))

    def rule(self, rule_id: RuleId) -> RuleSpec:
        """The catalogue entry of a rule (every :class:`RuleId` has one in a loaded bundle)."""
        return self.rules.catalogue[str(rule_id)]


def _restore(
    directory: Path,
    version: str,
    fields: dict[str, FieldSpec],
    aliases: dict[str, str],
    purposes: dict[str, str],
    subscribers: dict[str, Subscriber],
    consents: tuple[Consent, ...],
    rules: RulesDoc,
    zones: ZoneSet,
) -> PolicyBundle:
    return PolicyBundle(
        directory=directory,
        version=version,
        fields=MappingProxyType(fields),
        aliases=MappingProxyType(aliases),
        purposes=MappingProxyType(purposes),
        subscribers=MappingProxyType(subscribers),
        consents=consents,
        rules=rules,
        zones=zones,
    )
