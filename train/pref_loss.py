"""The preference losses over a batch of pairs: DPO, SimPO and ORPO, from each reply's log-likelihood.

Inputs, per pair: the summed log-probability of the chosen and of the rejected reply (their reply tokens
and ``<|im_end|>``: the SFT mask), how many tokens those are, and for DPO the same sums under the
reference model (the initial checkpoint, computed once: `train.pref_reference`).

* ``dpo`` (Rafailov et al. 2023): ``-log σ(β·[(c - c_ref) - (r - r_ref)])``. At the first step the
  policy is the reference, so the loss is exactly ln 2.
* ``simpo`` (Meng et al. 2024): ``-log σ(β·(c/|c| - r/|r|) - γ)``: length-normalised, no reference.
* ``orpo`` (Hong et al. 2024): ``-c/|c| - λ·log σ(log odds(c/|c|) - log odds(r/|r|))`` with
  ``odds(p) = p / (1 - p)``: the chosen reply's mean NLL (SFT) plus an odds-ratio term, no reference.

Each pair's "reward" is the quantity the loss compares (DPO: β times the log-ratio to the reference;
SimPO: β times the mean log-prob; ORPO: λ times the mean log-prob, as trl logs it); `margin` is chosen
minus rejected and `reward_acc` the share of pairs where it is positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TRAIN_METRICS = ("reward_acc", "margin", "chosen_logp", "rejected_logp")
VAL_METRICS = (*TRAIN_METRICS, "chosen_shift")  # chosen_shift: chosen log-prob now minus the initial model's


@dataclass(frozen=True)
class Objective:
    """One preference loss and its weights (from the run's ``cfg.stage``: loss, dpo_beta, ...)."""

    name: str = "dpo"
    beta: float = 0.1  # DPO's or SimPO's beta
    gamma: float = 0.0  # SimPO's target margin
    lam: float = 0.1  # ORPO's weight of the odds-ratio term

    @classmethod
    def from_options(cls, options) -> Objective:
        """The loss a preference run's settings (``cfg.stage``: `train.stages.dpo.PrefOptions`) name."""
        if options.loss == "simpo":
            return cls("simpo", options.simpo_beta, options.simpo_gamma)
        if options.loss == "orpo":
            return cls("orpo", lam=options.orpo_lambda)
        return cls("dpo", options.dpo_beta)

    @property
    def needs_reference(self) -> bool:
        return self.name == "dpo"

    def pair_losses(self, nll: torch.Tensor, counts: torch.Tensor,
                    reference: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss per pair, metric sums)`` from rows' summed NLL and token counts (2P,: chosen rows, then
        rejected) and `reference` (P, 2) log-probs (chosen, rejected) of the initial model."""
        P = nll.shape[0] // 2
        logp = -nll.float()
        chosen, rejected = logp[:P], logp[P:]
        n = counts.float().clamp(min=1.0)
        mean_c, mean_r = chosen / n[:P], rejected / n[P:]
        if self.name == "dpo":
            ref = reference.float()
            margin = self.beta * ((chosen - ref[:, 0]) - (rejected - ref[:, 1]))
            loss = -F.logsigmoid(margin)
        elif self.name == "simpo":
            margin = self.beta * (mean_c - mean_r)
            loss = -F.logsigmoid(margin - self.gamma)
        else:
            log_odds = (mean_c - mean_r) - (_log1mexp(mean_c) - _log1mexp(mean_r))
            margin = self.lam * (mean_c - mean_r)
            loss = -mean_c - self.lam * F.logsigmoid(log_odds)
        margin = margin.detach()
        sums = {"reward_acc": (margin > 0).float().sum(), "margin": margin.sum(),
                "chosen_logp": chosen.detach().sum(), "rejected_logp": rejected.detach().sum(),
                "chosen_shift": (chosen.detach() - reference[:, 0].float()).sum()}
        return loss, sums


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable near 0 (a mean log-prob is never exactly 0 in practice)."""
    return torch.log(-torch.expm1(x.clamp(max=-1e-6)))
