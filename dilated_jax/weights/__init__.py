"""Released weights: the authors' Caffe models, ImageNet VGG-16 (Caffe or torchvision) and fyu/drn's DRNs (drn.py)
onto this library's networks.

  python -m dilated_jax.weights.convert --preset camvid --weights dilation8_camvid.caffemodel --workdir DIR
  python -m dilated_jax.predict --preset camvid --weights dilation8_camvid.caffemodel --output_dir OUT a.png

Nothing here needs Caffe or torch: caffe.py decodes the protobuf wire format, torch_pickle.py reads torch.save
files with an unpickler that builds tensors and dicts only, importer.py maps layers by name and checks shapes,
drn.py does the same for fyu/drn's state dicts (BatchNorm statistics included).
"""

from dilated_jax.weights.importer import (Imported, canonical_name, check_params, import_layers, import_weights,
                                          initialise, network_params, read_layers)
from dilated_jax.weights.drn import load_drn
