"""RUN BY YOU, in your own training environment: a facebookresearch/dlrm checkpoint -> safetensors + config.

lowprec never unpickles a user's file (torch.load of an untrusted pickle executes code). The
reference DLRM code (dlrm_s_pytorch.py, `--save-model=FILE`) writes a torch.save pickle, so this
script, which you read and run where you trust the checkpoint (it is yours), turns it into the two
files `lowprec import --format dlrm-reference` reads:

    python tools/dlrm_reference_to_safetensors.py --checkpoint model.pt --out dlrm_ref
    lowprec import --format dlrm-reference --state-dict dlrm_ref/model.safetensors \
        --config dlrm_ref/config.json --data data/criteo --out models/ref

It needs only torch and safetensors (not lowprec). Pass the interaction flags you trained with
(`--arch-interaction-op`, `--arch-interaction-itself`) and, if your tables were not in the
dataset's sparse feature order, `--sparse-feature-names C1,C2,...` in emb_l order.
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="the file dlrm_s_pytorch.py --save-model wrote")
    ap.add_argument("--out", required=True, help="directory for model.safetensors + config.json")
    ap.add_argument("--arch-interaction-op", default="dot")
    ap.add_argument("--arch-interaction-itself", action="store_true")
    ap.add_argument("--sparse-feature-names", help="comma-separated feature names in emb_l order")
    args = ap.parse_args()
    try:  # tensors, numbers and dicts only; fall back to a full unpickle of YOUR OWN file if needed
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "model.safetensors"))
    config = {"format": "dlrm-reference", "source": os.path.basename(args.checkpoint),
              "arch_interaction_op": args.arch_interaction_op,
              "arch_interaction_itself": bool(args.arch_interaction_itself),
              "epoch": ckpt.get("epoch") if isinstance(ckpt, dict) and isinstance(ckpt.get("epoch"), int) else None}
    if args.sparse_feature_names:
        config["sparse_feature_names"] = [x.strip() for x in args.sparse_feature_names.split(",")]
    with open(os.path.join(args.out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    print(f"wrote {len(tensors)} tensors to {args.out}/model.safetensors and {args.out}/config.json")


if __name__ == "__main__":
    main()
