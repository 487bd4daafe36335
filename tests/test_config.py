import pytest

from fdrl.config import apply_overrides, builtin_config_dir, load_config, parse_override
from fdrl.errors import ConfigError


def test_builtin_configs_load():
    names = sorted(p.stem for p in builtin_config_dir().glob("*.yaml"))
    assert {"demo", "iemocap_paper", "iemocap_features", "emodb"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.model_name


def test_paper_config_has_the_paper_values():
    cfg = load_config("iemocap_paper")
    assert (cfg.model.alpha, cfg.model.beta, cfg.model.gamma) == (1.0, 0.5, 1.0)
    assert cfg.train.lr == 1e-5 and cfg.train.batch_size == 8 and cfg.train.epochs == 100
    assert cfg.features.speech["model"] == "facebook/wav2vec2-base"
    assert cfg.features.text["model"] == "bert-base-uncased"
    assert cfg.cv.protocol == "session"


def test_overrides_are_typed():
    cfg = load_config("demo", ["train.lr=3e-4", "model.beta=0", "cv.folds=[1, 3]",
                               "features.text={name: none}"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.beta == 0.0
    assert cfg.cv.folds == [1, 3]
    assert cfg.features.text == {"name": "none"}


@pytest.mark.parametrize("override, message", [
    ("train.lr_rate=0.1", "did you mean 'lr'"),
    ("trian.lr=0.1", "did you mean 'train'"),
    ("train.epochs=ten", "train.epochs: expected an integer"),
    ("train.patience=1.5", "train.patience: expected an integer"),
    ("run.tensorboard=maybe", "expected true or false"),
    ("cv.protocol=sesion", "did you mean 'session'"),
    ("model.alpah=1", "did you mean 'alpha'"),
    ("model.name=fdlr", "did you mean 'fdrl'"),
])
def test_config_errors_name_the_key_and_suggest(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_round_trip_and_hash_are_stable():
    a = load_config("demo", ["train.seed=3"])
    from fdrl.config import from_dict

    b = from_dict(a.to_dict())
    assert a.to_yaml() == b.to_yaml() and a.sha256() == b.sha256()
    assert a.sha256() != load_config("demo").sha256()


def test_bad_override_syntax_and_missing_config():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="no such file"):
        load_config("does-not-exist")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_switching_the_model_on_the_command_line_keeps_only_its_keys():
    """demo.yaml holds FDRL's loss weights; model.name=foalnet keeps d/hidden/dropout and
    leaves alpha/beta/gamma out, while an explicit foreign key is still an error."""
    from fdrl.config import load_config

    cfg = load_config("demo", ["model.name=foalnet"])
    assert cfg.model_name == "foalnet" and cfg.model.d == 64 and cfg.model.dropout == 0.2
    assert load_config("demo", {"model.name": "concat"}).model_name == "concat"
    assert load_config("demo", ["model.name=fdrl"]).model.beta == 0.5  # same model: untouched
    with pytest.raises(ConfigError, match="unknown key 'model.alpha'"):
        load_config("demo", ["model.name=foalnet", "model.alpha=1.0"])
