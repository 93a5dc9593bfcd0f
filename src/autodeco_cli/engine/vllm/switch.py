"""Per-request learned decoding inside one vLLM engine, and the per-token T̂/P̂ trace: the
`vllm.logits_processors` entry point, one class that both of vLLM's model runners accept.

An AutoDeco model's `compute_logits` transforms every row (see `model.py`). The switch runs
before vLLM's own temperature/top-p and:

- gives requests that asked for another decoding (``extra_args={"autodeco": False}``: static,
  greedy, the adaptive samplers' baselines) their raw base-model row back, so one engine serves
  every strategy of an eval or a grid in the same batches;
- records T̂, P̂ and the nucleus size for requests that carry ``extra_args={"autodeco_trace": id}``
  through the trace channel (`trace.py`), before the step's tokens are returned. vLLM's outputs
  have no field for them; a file is the one channel that crosses its engine and worker
  processes without patching vLLM. A sampled row that vLLM discards (a partly prefilled prompt,
  a rejected draft token) is written again when that token is really sampled, and the later
  line wins (`TraceReader`).

Requests without ``autodeco`` in their extra args use learned decoding: that is what an
AutoDeco model is served for. On a model that is not AutoDeco the switch does nothing.

Why one entry point and this class. vLLM 0.32 has two logits-processor interfaces, and the
loaders of both read *every* entry point in the one group ``vllm.logits_processors``:

- V1's (`vllm.v1.sample.logits_processor._load_logitsprocs_plugins`) takes whatever an entry
  point names, with no type check, and builds it as ``cls(vllm_config, device, is_pin_memory)``;
- MRV2's (`..._load_v2_logitsprocs_plugins`, which the frontend's params validator also runs
  whenever vLLM picks MRV2, for any model) raises ValueError unless the class subclasses MRV2's
  `LogitsProcessor`, and builds it as ``cls(vllm_config, req_states)``.

So a second entry point cannot help: each loader would load both, MRV2's would reject the V1
class and V1's would build the MRV2 one with the wrong arguments. A class inheriting both
interfaces would need one `apply` answering two signatures. Instead `AutoDecoSwitch` *is* the
MRV2 processor (so MRV2's check passes), and its `__new__` recognises V1's three-argument
construction and returns the V1 processor in its place (Python then skips `__init__`). Each
interface keeps its own class (`switch_v1.py`, `switch_v2.py`, both calling `switch_rows.py`),
and the constructor's signature, the one thing that tells the two loaders apart, picks between
them. `validate_params` is the same check in both, so either frontend rejects the same bad
extra args. Neither construction does work that can fail on a model that is not AutoDeco.
"""

from __future__ import annotations

from .switch_v2 import AutoDecoSwitchV2

V1_ARGUMENTS = 3  # V1: (vllm_config, device, is_pin_memory); MRV2: (vllm_config, req_states)


class AutoDecoSwitch(AutoDecoSwitchV2):
    def __new__(cls, *args, **kwargs):
        if len(args) + len(kwargs) == V1_ARGUMENTS:
            # imported here: a frontend that only validates params under MRV2 never needs V1's sampler
            from .switch_v1 import AutoDecoSwitchV1

            return AutoDecoSwitchV1(*args, **kwargs)
        return super().__new__(cls)
