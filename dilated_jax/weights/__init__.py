"""Released weights: the authors' Caffe models and ImageNet VGG-16 (Caffe or torchvision) onto this network.

  python -m dilated_jax.weights.convert --preset camvid --weights dilation8_camvid.caffemodel --workdir DIR
  python -m dilated_jax.predict --preset camvid --weights dilation8_camvid.caffemodel --output_dir OUT a.png

Nothing here needs Caffe or torch: caffe.py decodes the protobuf wire format, torch_pickle.py reads torch.save
files with an unpickler that builds tensors and dicts only, importer.py maps layers by name and checks shapes.
"""

from dilated_jax.weights.importer import (Imported, canonical_name, check_params, import_layers, import_weights,
                                          initialise, network_params, read_layers)
