"""Models save and load: a config of plain values and a state_dict, read back by torch.load's default
weights_only=True; train_score_mlp returns a picklable ScoreMLP module."""
import pickle

import pytest
import torch

from fastsamp import models
from fastsamp.models import EnergyMLP, GaussianMixture, Product, ScoreMLP, ScoreModel, train_score_mlp
from fastsamp.samplers.diffusion import DiffusionSampler
from fastsamp.schedules import VE
from fastsamp.targets import get_target

A = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.log(torch.tensor([0.4, 0.6])),
                    torch.tensor([0.5, 0.3]))
B = GaussianMixture(torch.tensor([[0.0, 1.0]]), torch.zeros(1), torch.ones(1), schedule=VE(), backend="torch")
X = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))


def round_trip(model, tmp_path):
    path = tmp_path / "model.pt"
    models.save(model, path)
    torch.load(path)  # the default weights_only=True reads it
    return models.load(path)


def test_mixture_and_product_round_trip(tmp_path):
    a = round_trip(A, tmp_path)
    torch.testing.assert_close(a.score(X, 0.3), A.score(X, 0.3), rtol=0, atol=0)
    b = round_trip(B, tmp_path)
    assert b.schedule == VE() and b.backend == "torch"
    prod = round_trip(Product(A, B), tmp_path)
    torch.testing.assert_close(prod.log_prob(X, 0.1), Product(A, B).log_prob(X, 0.1), rtol=0, atol=0)


def test_trained_score_mlp_is_a_module_that_saves_and_pickles(tmp_path):
    net = train_score_mlp(A.sample(512, torch.Generator().manual_seed(1)), n_iters=20, batch_size=64, hidden=16)
    assert isinstance(net, ScoreMLP) and net.dim == 2 and not net.training
    x64 = X.double()
    assert net.score(x64, 0.5).dtype == torch.float64  # a float32 network serves float64 chains
    again = round_trip(net, tmp_path)
    torch.testing.assert_close(again.score(X, 0.5), net.score(X, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(net)).score(X, 0.5), net.score(X, 0.5), rtol=0, atol=0)
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    fresh = ScoreMLP(2, hidden=16)
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt"))
    torch.testing.assert_close(fresh.score(X, 0.5), net.score(X, 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", [ScoreMLP, EnergyMLP])
def test_network_round_trip_keeps_its_dtype(cls, dtype, tmp_path):
    """The dtype is that of the saved tensors (files written before this test load the same way); loading draws
    nothing from torch's global RNG (the model is built on the meta device, no random initialisation)."""
    torch.manual_seed(0)
    net = cls(2, hidden=16, data_mean=torch.tensor([0.5, -1.0]), data_var=2.0, dtype=dtype).eval()
    rng = torch.get_rng_state()
    again = round_trip(net, tmp_path)
    assert torch.equal(torch.get_rng_state(), rng)
    assert again.freq.dtype == dtype and all(p.dtype == dtype for p in again.parameters())
    for name, p in net.state_dict().items():
        assert torch.equal(again.state_dict()[name], p), name
    x = X.to(dtype)
    torch.testing.assert_close(again.score(x, 0.5), net.score(x, 0.5), rtol=0, atol=0)
    on_meta = models.load(tmp_path / "model.pt", map_location="meta")  # the device follows map_location
    assert all(t.device.type == "meta" and t.dtype == dtype for t in on_meta.state_dict().values())


def test_wrappers_of_user_code_say_how_to_save():
    with pytest.raises(TypeError, match="ScoreModel cannot be saved.*save its network's state_dict"):
        models.save(ScoreModel(lambda x, t: -x, 2), "unused.pt")


def test_diffusion_sampler_round_trip(tmp_path):
    torch.manual_seed(0)
    sampler = DiffusionSampler(get_target("25gmm"), n_steps=8, hidden=16, n_harmonics=8, langevin=True)
    path = tmp_path / "sampler.pt"
    sampler.save(path)
    saved = torch.load(path)  # weights_only=True
    assert saved["config"]["net"] == {"hidden": 16, "n_harmonics": 8, "langevin": True}
    again = DiffusionSampler.load(path)
    x, log_w = sampler.sample(32, seed=3)
    x2, log_w2 = again.sample(32, seed=3)
    torch.testing.assert_close(x2, x, rtol=0, atol=0)
    torch.testing.assert_close(log_w2, log_w, rtol=0, atol=0)
    with pytest.raises(ValueError, match="target has dim 10 but the sampler .* dim 2"):
        DiffusionSampler.load(path, target=get_target("funnel"))


def test_fastsamp_train_out_writes_a_loadable_sampler(tmp_path):
    from fastsamp.cli import main
    main(["train", "--target", "25gmm", "--method", "tb", "--iterations", "2", "--batch-size", "8",
          "--eval-samples", "16", "--out", str(tmp_path)])
    path = tmp_path / "25gmm_tb_seed0.pt"
    assert torch.load(path)["config"]["target"] == "25gmm"  # weights_only=True
    x, _ = DiffusionSampler.load(path).sample(4)
    assert x.shape == (4, 2)
