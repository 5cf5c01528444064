import torch

import mup2
from mup2.models import MLP


def test_public_api_trains_one_step() -> None:
    torch.manual_seed(0)
    model, base = MLP(128, in_features=8), MLP(32, in_features=8)
    p = mup2.Parametrization.infer(model, base)
    p.init_(model, seed=0)
    opt = mup2.SAM(p.param_groups(model, lr=0.1), torch.optim.SGD, rho=0.05)
    x, y = torch.randn(16, 8), torch.randint(0, 10, (16,))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure)
    assert first is not None and torch.isfinite(first)
    assert all(hasattr(mup2, name) for name in mup2.__all__)
