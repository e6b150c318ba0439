import pytest
import yaml

from physmorph.errors import ConfigError
from physmorph.surface import SurfaceConfig, surface_config_from_mapping


def test_reference_runtime_surface_loads_unchanged(shared_dir):
    with open(shared_dir / "reference" / "sphere_to_bunny.yaml") as file:
        mapping = yaml.safe_load(file)["sampling"]["runtime_surface"]
    config, unused = surface_config_from_mapping(mapping)
    section = "sampling.runtime_surface"
    assert config.M == 50_000 and config.k_F == 32
    # The reference's σ0 of 0.02 would leave holes: surfels are sized from the surface area,
    # and the warning says so.
    assert config.sigma0 is None
    reasons = [key for key in unused if key.startswith(f"{section}.base_gaussian_scale")]
    assert reasons and "holes" in reasons[0] and "coverage" in reasons[0]
    for key in ("use_hybrid_faiss", "use_faiss_ivf", "ivf_nlist", "ivf_nprobe", "k_surface", "post_equalize"):
        assert f"{section}.{key}" in unused
    assert f"{section}.M" not in unused


def test_sigma0_is_used_in_physmorph_sections():
    config, unused = surface_config_from_mapping({"sigma0": 0.05, "base_gaussian_scale": 0.02})
    assert config.sigma0 == 0.05
    assert unused == ["sampling.runtime_surface.base_gaussian_scale"]


def test_unknown_key_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"sampling\.runtime_surface\.k_Ff"):
        surface_config_from_mapping({"k_Ff": 12})


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"smoothing": 0.0}, "smoothing"),
        ({"sigma0": 0.0}, "sigma0"),
        ({"M": 0}, "'M'"),
        ({"flatness": 1.5}, "flatness"),
        ({"coverage": -1.0}, "coverage"),
    ],
)
def test_out_of_range_values_name_the_key(mapping, key):
    with pytest.raises(ConfigError, match=key):
        surface_config_from_mapping(mapping)


def test_defaults_validate():
    SurfaceConfig().validate()
