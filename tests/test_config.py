import pytest
import yaml

from gristmill.config import ConfigError, GristmillConfig, load_config

from .conftest import REPO


def test_defaults_are_the_published_thresholds():
    cfg = GristmillConfig()
    g = cfg.clean.gopher_quality
    assert (g.min_doc_words, g.max_doc_words, g.min_avg_word_length, g.max_avg_word_length) == (50, 100_000, 3, 10)
    assert (g.max_symbol_word_ratio, g.max_bullet_lines_ratio, g.max_ellipsis_lines_ratio) == (0.1, 0.9, 0.3)
    assert (g.min_alpha_words_ratio, g.min_stop_words) == (0.8, 2)
    r = cfg.clean.gopher_repetition
    assert (r.dup_line_frac, r.dup_para_frac, r.dup_line_char_frac, r.dup_para_char_frac) == (0.3, 0.3, 0.2, 0.2)
    assert r.top_n_grams == ((2, 0.2), (3, 0.18), (4, 0.16))
    assert dict(r.dup_n_grams) == {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    assert cfg.langid.threshold == 0.65


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, GristmillConfig)


def test_corpus_yaml_documents_every_default():
    # configs/corpus.yaml claims to list every key with its default: hold it to that
    assert load_config(REPO / "configs" / "corpus.yaml") == GristmillConfig()
    # ... and every key of the data stages, the tokenizer's included (`tokenizer train --help` points here)
    sections = yaml.safe_load((REPO / "configs" / "corpus.yaml").read_text())
    assert set(sections) == set(GristmillConfig.model_fields) - {"model", "pretrain", "sft", "finetune_cls", "ablate"}
    for name, section in sections.items():
        assert set(section) == set(type(getattr(GristmillConfig(), name)).model_fields), name


def test_unknown_key_is_an_error_that_names_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("langid:\n  treshold: 0.5\n")
    with pytest.raises(ConfigError, match="langid.treshold"):
        load_config(p)


def test_bad_value_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("langid:\n  threshold: 1.5\n")
    with pytest.raises(ConfigError, match="langid.threshold"):
        load_config(p)


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["langid.threshold=0.8", "langid.keep=[en, de]", "clean.pii.enabled=false"])
    assert cfg.langid.threshold == 0.8
    assert cfg.langid.keep == ("en", "de")
    assert cfg.clean.pii.enabled is False


def test_empty_sections_mean_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("langid:\nclean:\n")
    assert load_config(p) == GristmillConfig()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_changes_with_config():
    assert GristmillConfig().fingerprint() != load_config(None, ["langid.threshold=0.7"]).fingerprint()
    assert GristmillConfig().fingerprint() == GristmillConfig().fingerprint()


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("langid:\n  threshold: 0.5\n  keep: [en]\n  threshold: 0.9\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: line 4: key 'threshold' is given twice in one section "
                                          r"\(first on line 2\)"):
        load_config(path)


def test_an_oversize_config_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("langid:\n  keep: [" + ", ".join(["en"] * 400_000) + "]\n")
    with pytest.raises(ConfigError, match="is not a config file"):
        load_config(path)


@pytest.mark.parametrize("bands, rows", [(0, 0), (0, 11), (-1, 5)])
def test_lsh_shapes_that_cannot_be_used_are_refused(bands, rows):
    with pytest.raises(ConfigError, match="near_dedup.bands"):
        load_config(None, [f"near_dedup.bands={bands}", f"near_dedup.rows={rows}"])
