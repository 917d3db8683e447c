"""The example's toy env (``examples/atropos_env.py``) with one addition for
``test_atropos_pipeline.py``: every ``normalize`` call of its shared normalizer is appended to
the JSONL file ``$SRN_ATROPOS_RECORD`` (the raw scores, the normalized ones, the statistics
that call used and the process), so the test can check each z-score exactly. Run as the
example is: ``python atropos_recording_env.py serve ...``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from atropos_env import ToyArithmeticEnv

from shared_rewardnorm.aio import AsyncSharedRewardNormalizer


class RecordingNormalizer(AsyncSharedRewardNormalizer):
    async def normalize(self, scores: Any, update: bool = True, *, batch_id: str | int | None = None) -> list[float]:
        raw = [float(x) for x in scores]
        out = await super().normalize(scores, update, batch_id=batch_id)
        # No await since the call returned: self.stats are still the ones this call used.
        record = {"pid": os.getpid(), "raw": raw, "normalized": out, "stats": self.stats.to_dict(),
                  "batch_id": batch_id}
        with open(os.environ["SRN_ATROPOS_RECORD"], "a") as file:
            file.write(json.dumps(record) + "\n")
        return out


class RecordingToyArithmeticEnv(ToyArithmeticEnv):
    def _make_reward_normalizer(self) -> AsyncSharedRewardNormalizer:
        config = self.config
        return RecordingNormalizer(
            self.reward_norm_env, config.reward_norm_redis_url, mode=config.reward_normalization,
            clip=config.reward_clip, warmup=config.reward_normalization_warmup,
            namespace=config.reward_norm_namespace)


if __name__ == "__main__":
    RecordingToyArithmeticEnv.cli()
