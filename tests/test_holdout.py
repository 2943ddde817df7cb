"""The held-out split of a crawl (config ``holdout``; ``ablate.crawl_heldout``): by a hash of the id, before any
filter, so every recipe leaves out the same documents; and a held-out page copied under another id leaves the set."""

from __future__ import annotations

from pathlib import Path

from gristmill.config import GristmillConfig, HoldoutConfig
from gristmill.documents import new_document
from gristmill.pipelines import filters
from gristmill.pipelines.clean import Cleaner, stages
from gristmill.trainer import leaks
from gristmill.trainer.ablate import normalize_heldout

from .conftest import shared

IDS = [f"<urn:uuid:{i:08x}-crawl>" for i in range(20_000)]

#: a paragraph of Frankenstein: every filter of the default recipe keeps it
ENGLISH = next(p for p in normalize_heldout(Path(shared("text/pg84_frankenstein.txt")).read_text(encoding="utf-8"))
               .split("\n\n") if len(p.split()) > 120)
FRENCH = ("Le conseil municipal s'est réuni mardi pour discuter du budget de l'année prochaine et de la "
          "bibliothèque. ") * 4


def test_the_two_sides_of_the_split_partition_the_ids_at_the_asked_share():
    rest = HoldoutConfig(fraction=0.05)
    held = HoldoutConfig(fraction=0.05, keep="held_out")
    out_of_rest = {i for i in IDS if filters.holdout(i, rest) == "held_out"}
    kept_by_held = {i for i in IDS if filters.holdout(i, held) is None}
    assert out_of_rest == kept_by_held  # one split: what one side leaves out, the other keeps
    assert all(filters.holdout(i, held) == "not_held_out" for i in set(IDS) - kept_by_held)
    assert 0.045 < len(out_of_rest) / len(IDS) < 0.055
    # another salt, another draw of the same size; a larger share holds out a superset
    other = {i for i in IDS if filters.holdout(i, HoldoutConfig(fraction=0.05, salt="x")) == "held_out"}
    assert other != out_of_rest and 0.045 < len(other) / len(IDS) < 0.055
    larger = {i for i in IDS if filters.holdout(i, HoldoutConfig(fraction=0.2)) == "held_out"}
    assert out_of_rest < larger


def _cfg(**holdout) -> GristmillConfig:
    return GristmillConfig.model_validate({"holdout": holdout, "langid": {"keep": ["en"]}})


def test_a_held_out_document_leaves_before_any_filter_whatever_its_text():
    cfg = _cfg(fraction=0.5)
    held_id = next(i for i in IDS if filters.holdout(i, cfg.holdout))
    kept_id = next(i for i in IDS if not filters.holdout(i, cfg.holdout))
    cleaner = Cleaner(cfg)
    # French: language ID would drop it, but it is held out first (the same reason in every recipe)
    assert cleaner.process(new_document(held_id, FRENCH, "s"))["reason"] == "holdout:held_out"
    assert cleaner.process(new_document(kept_id, FRENCH, "s"))["reason"] == "langid:not_kept"
    assert cleaner.process(new_document(kept_id, ENGLISH, "s"))["reason"] is None
    # the other side: the held-out document is then cleaned like any other
    other = Cleaner(_cfg(fraction=0.5, keep="held_out"))
    assert other.process(new_document(kept_id, ENGLISH, "s"))["reason"] == "holdout:not_held_out"
    assert other.process(new_document(held_id, FRENCH, "s"))["reason"] == "langid:not_kept"
    assert other.process(new_document(held_id, ENGLISH, "s"))["reason"] is None
    # in the funnel first after extraction, and only when on (a run without it keeps its funnel and fingerprint)
    assert stages(cfg)[:4] == ("read", "extract", "holdout", "normalize")
    assert "holdout" not in stages(GristmillConfig())
    assert "holdout" not in GristmillConfig().model_dump() and "holdout" in cfg.model_dump()


def test_a_held_out_page_copied_under_another_id_leaves_the_held_out_set():
    page = ("Ten years after the flood the town rebuilt its bridge with money raised by the families who had lost "
            "their homes, and the old stones were set into the new railings so that nobody would forget. ") * 3
    other = ("A recipe for bread needs flour, water, salt and time; the slower the rise, the deeper the flavour of "
             "the crust, which is why bakers leave their dough overnight in a cool room before baking. ") * 3
    template = "Share this page on social media and subscribe to our newsletter for the latest news every week"
    training = [leaks.Source("corpus", lambda: ["intro " + page + " outro", template + " and more"])]
    kept, copies = leaks.drop_copies([page, other + " " + template], training, max_share=0.5)
    # the copy leaves; a page that shares only its site's template with training stays
    assert (kept, copies) == ([other + " " + template], 1)
    assert leaks.drop_copies([page], [leaks.Source("unreadable", None)], 0.5) == ([page], 0)
