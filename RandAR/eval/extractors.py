"""Feature extractors for the metric suite, by name, so every evaluation tool selects them the same way.

    adm   ADM's Inception-v3 graph; path = classify_image_graph_def.pb (default $RANDAR_INCEPTION_PATH or
          ~/.cache/randar/classify_image_graph_def.pb); backend "tf" (RandAR.eval.fid.InceptionV3TF) or "torch"
          (RandAR.eval.inception_torch.InceptionV3Torch: the same graph run by PyTorch, no TensorFlow), chosen
          by RandAR.eval.fid.build_inception, which `python -m RandAR.eval.fid` uses too
    toy   the CPU quickstart's classifier (RandAR.toy.classifier); path = its checkpoint (required)
    a.b.C any class with a no-argument constructor and RandAR.eval.fid.FeatureExtractor's `pool_features`
"""
from typing import Optional

EVALUATORS = ("adm", "toy")


def build_extractor(name: str, path: Optional[str] = None, backend: str = "tf"):
    if name == "adm":
        from RandAR.eval.fid import build_inception
        return build_inception(backend, path)
    if name == "toy":
        if not path:
            raise ValueError("the toy evaluator needs its classifier checkpoint (tools/train_classifier.py): "
                             "pass its path")
        from RandAR.toy.classifier import build_toy_extractor
        return build_toy_extractor(path)
    if "." in name:
        from RandAR.utils.config_schema import get_obj_from_str
        return get_obj_from_str(name)()
    raise ValueError(f"evaluator {name!r}: expected one of {EVALUATORS} or the dotted path of a class")
