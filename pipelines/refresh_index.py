"""A published corpus as a refresh sees it: its versions, their LSH index files, and the checks
that a new crawl can be deduplicated against it.

A corpus directory written with near-dedup on holds ``_index/part-NNNNN.arrow`` (one row per kept
document: id, source, exact-dedup hash, band keys, signature; see gristmill/documents.py). A
refresh reads only these files of every earlier version: it never re-reads old text, never
recomputes old signatures and never rewrites old shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gristmill import io
from gristmill.config import GristmillConfig, NearDedupConfig
from gristmill.dedupe.components import published_node
from gristmill.dedupe.minhash import SCHEME, lsh_params
from gristmill.errors import GristmillError

#: near-dedup settings that must be equal for band keys and signatures to be comparable
_COMPATIBLE = ("ngram", "num_perm", "seed")


class RefreshError(GristmillError):
    """A published corpus that cannot be refreshed; the message names what to fix."""


def read_index_rows(path: str):
    """Rows of one index file, each with the published node it stands for."""
    for row in io.read_table(path).to_pylist():
        row["node"] = published_node(row["id"], f"{path}:{row['source']}")
        yield row


def _lsh_params(nd: dict) -> tuple[int, int]:
    return lsh_params(NearDedupConfig.model_validate(nd))


@dataclass
class PublishedCorpus:
    path: str
    manifest: dict
    versions: list[dict] = field(default_factory=list)
    index_files: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str) -> PublishedCorpus:
        mpath = io.join(path, "manifest.json")
        if not io.exists(mpath):
            raise RefreshError(f"{path} is not a published gristmill corpus: no manifest.json")
        manifest = io.read_json(mpath)
        versions = manifest.get("versions") or [_version_entry(path, manifest, parent=None)]
        corpus = cls(path, manifest, versions)
        for v in versions:
            vm = manifest if v["path"] == path else _read_manifest(v["path"])
            # a version that kept nothing (a month with nothing new) has an empty index: that is fine
            if not vm.get("near_dedup") or (vm["counts"]["kept"] and not vm.get("index_shards")):
                raise RefreshError(
                    f"published corpus {v['path']} has no LSH index (_index/): it was written with "
                    "near_dedup disabled; rebuild it with `gristmill corpus` and near_dedup.enabled: true"
                )
            for s in vm["index_shards"]:
                f = io.join(v["path"], s["path"])
                if not io.exists(f):
                    raise RefreshError(f"published corpus {v['path']} is missing its index file {s['path']}")
                corpus.index_files.append(f)
        return corpus

    def default_config(self) -> GristmillConfig:
        """The config the published corpus was built with (a refresh cleans the same way)."""
        return GristmillConfig.model_validate(self.manifest["config"])

    def check_compatible(self, cfg: GristmillConfig) -> None:
        if not cfg.near_dedup.enabled:
            raise RefreshError("a refresh deduplicates against the published corpus: near_dedup.enabled must be true")
        ours = cfg.near_dedup.model_dump()
        theirs = self.manifest["config"]["near_dedup"]
        diffs = [f"near_dedup.{k}: published {theirs[k]!r}, this run {ours[k]!r}"
                 for k in _COMPATIBLE if theirs[k] != ours[k]]
        if _lsh_params(theirs) != _lsh_params(ours):
            diffs.append(f"LSH bands × rows: published {_lsh_params(theirs)}, this run {_lsh_params(ours)}")
        scheme = self.manifest["near_dedup"].get("minhash_scheme")
        if scheme != SCHEME:
            diffs.append(f"MinHash scheme: published {scheme}, this run {SCHEME}")
        if diffs:
            raise RefreshError(
                f"the MinHash configuration differs from the published corpus {self.path}, so their "
                "signatures cannot be compared:\n  " + "\n  ".join(diffs)
                + "\nRun the refresh with the published corpus's settings (the default without --config)."
            )

    def lineage(self, output: str, manifest: dict) -> dict:
        """Manifest entries of the new version: its parent and the list of all versions."""
        entry = _version_entry(output, manifest, parent=self.path)
        return {"parent": self.path, "versions": [*self.versions, entry]}


def _read_manifest(path: str) -> dict:
    mpath = io.join(path, "manifest.json")
    if not io.exists(mpath):
        raise RefreshError(f"version {path} of the published corpus is missing (no manifest.json)")
    return io.read_json(mpath)


def _version_entry(path: str, manifest: dict, parent: str | None) -> dict:
    c = manifest["counts"]
    removed = {r: n for r, n in c["dropped"].items() if r.endswith("published_duplicate")}
    return {
        "path": path,
        "parent": parent,
        "read": c["read"],
        "added": c["kept"],
        "removed_as_duplicates_of_published": removed,
        "dropped": sum(c["dropped"].values()),
    }
