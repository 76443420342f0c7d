"""Pretrained weights: downloads, checkpoint readers, Hub plumbing, labels and preprocessing."""
from nonlocal_zoo.pretrained.download import cache_dir, fetch
from nonlocal_zoo.pretrained.hub import push_to_hub, resolve_hf, upload_folder_to_hub
from nonlocal_zoo.pretrained.labels import decode_predictions, kinetics400_labels, preprocess_input
from nonlocal_zoo.pretrained.pickle_io import load_caffe2_pickle, load_torch_state_dict
from nonlocal_zoo.pretrained.convert import CheckpointMismatchError, list_formats, register_format
from nonlocal_zoo.pretrained.loading import convert_checkpoint, download_preset, load_weights, push_to_hub
