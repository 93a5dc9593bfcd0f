"""fp32 vs the default (no --dtype) for bench_engine.py's accuracy part: does bf16 change what we generate?"""

from __future__ import annotations


def run_accuracy(threads: int, model: str, chat_prompts: list[str]) -> dict:
    """fp32 vs the default: greedy agreement, teacher-forced T̂/P̂ differences and next-token KL."""
    import torch

    torch.set_num_threads(threads)
    from autodeco_cli.core.decoding import make_strategy
    from autodeco_cli.engine.generation import GenerationEngine
    from autodeco_cli.engine.heads_source import resolve_heads
    from autodeco_cli.engine.models import load_base_model
    from autodeco_cli.engine.requests import build_requests
    from autodeco_cli.evaluation.runner import prepare_task, resolve_tasks
    from autodeco_cli.tasks.registry import task_chat

    run = prepare_task(resolve_tasks("arith-add")[0], 64, None, None)
    lms = {
        name: load_base_model(model, device="cpu", dtype=dtype)
        for name, dtype in (("fp32", "float32"), ("default", None))
    }
    heads = resolve_heads(None, lms["fp32"], True)
    greedy = make_strategy("greedy")
    sets = {
        "chat": (chat_prompts, True, 64),
        "arith-add": ([d.prompt for d in run.docs], task_chat(run.task, True), 32),
    }
    report = {}
    for set_name, (prompts, chat, max_new) in sets.items():
        outputs = {}
        for name, lm in lms.items():
            engine = GenerationEngine(lm, heads)
            requests = build_requests(lm.tokenizer, prompts, greedy, n=1, seed=0, chat=chat)
            outputs[name] = engine.generate(requests, max_new_tokens=max_new, batch_size=32)
            engine.close()
        same = agree = total = 0
        for a, b in zip(outputs["fp32"], outputs["default"]):
            same += a.token_ids == b.token_ids
            prefix = next(
                (i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
                min(len(a.token_ids), len(b.token_ids)),
            )
            agree += prefix
            total += len(a.token_ids)
        # teacher-forced on the fp32 greedy text: the same contexts through both models and the heads
        deltas_t, deltas_p, kls, top1 = [], [], [], []
        for request, generation in zip(
            build_requests(lms["fp32"].tokenizer, prompts, greedy, n=1, seed=0, chat=chat), outputs["fp32"]
        ):
            ids = torch.tensor([request.input_ids + generation.token_ids])
            start = len(request.input_ids) - 1
            values = {}
            for name, lm in lms.items():
                with torch.inference_mode():
                    hidden = lm.model.get_decoder()(input_ids=ids).last_hidden_state[0, start:-1]
                    logits = lm.model.get_output_embeddings()(hidden).float()
                    t, p = heads(hidden.float(), logits)
                values[name] = (logits, t.squeeze(-1), p.squeeze(-1))
            (la, ta, pa), (lb, tb, pb) = values["fp32"], values["default"]
            deltas_t.append((ta - tb).abs())
            deltas_p.append((pa - pb).abs())
            kls.append(
                torch.nn.functional.kl_div(
                    torch.log_softmax(lb, -1), torch.log_softmax(la, -1), log_target=True, reduction="none"
                ).sum(-1)
            )
            top1.append((la.argmax(-1) == lb.argmax(-1)).float())
        dt, dp, kl, t1 = (torch.cat(x) for x in (deltas_t, deltas_p, kls, top1))
        report[set_name] = {
            "prompts": len(prompts),
            "identical_generations": same / len(prompts),
            "tokens_before_first_divergence": agree / max(total, 1),
            "teacher_forced_positions": int(dt.numel()),
            "top1_agreement": float(t1.mean()),
            "max_abs_dT": float(dt.max()),
            "mean_abs_dT": float(dt.mean()),
            "p99_abs_dT": float(dt.quantile(0.99)),
            "max_abs_dP": float(dp.max()),
            "mean_abs_dP": float(dp.mean()),
            "p99_abs_dP": float(dp.quantile(0.99)),
            "mean_KL_fp32_to_default": float(kl.mean()),
        }
    return report
