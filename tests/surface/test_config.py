import pytest
import yaml

from physmorph.errors import ConfigError
from physmorph.surface import SurfaceConfig, surface_config_from_mapping


def test_reference_runtime_surface_loads_unchanged(shared_dir):
    with open(shared_dir / "reference" / "sphere_to_bunny.yaml") as file:
        mapping = yaml.safe_load(file)["sampling"]["runtime_surface"]
    config, unused = surface_config_from_mapping(mapping)
    section = "sampling.runtime_surface"
    assert config.M == 50_000
    assert config.k_surface == 36 and config.k_F == 32
    assert config.thr_percentile == 8.0 and config.soft_tau == 0.08
    # Hybrid mode (use_hybrid_e2e: true) uses base_gaussian_scale as σ0.
    assert config.sigma0 == 0.02 and config.use_adaptive_scale
    assert config.post_equalize.enabled and config.post_equalize.iters == 8
    assert config.post_equalize.step == 0.45 and config.post_equalize.knn_tau == 0.15
    for key in ("use_hybrid_faiss", "use_faiss_ivf", "ivf_nlist", "ivf_nprobe", "sigma0"):
        assert f"{section}.{key}" in unused
    assert f"{section}.M" not in unused


def test_sigma0_is_used_without_hybrid_mode():
    config, unused = surface_config_from_mapping({"sigma0": 0.05, "base_gaussian_scale": 0.02})
    assert config.sigma0 == 0.05
    assert unused == ["sampling.runtime_surface.base_gaussian_scale"]


def test_unknown_key_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"sampling\.runtime_surface\.k_surfce"):
        surface_config_from_mapping({"k_surfce": 12})
    with pytest.raises(ConfigError, match=r"post_equalize\.itters"):
        surface_config_from_mapping({"post_equalize": {"itters": 3}})


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"thr_percentile": 100.0}, "thr_percentile"),
        ({"sigma0": 0.0}, "sigma0"),
        ({"M": 0}, "'M'"),
        ({"post_equalize": {"annealing": 1.5}}, "post_equalize.annealing"),
    ],
)
def test_out_of_range_values_name_the_key(mapping, key):
    with pytest.raises(ConfigError, match=key):
        surface_config_from_mapping(mapping)


def test_defaults_validate():
    SurfaceConfig().validate()
