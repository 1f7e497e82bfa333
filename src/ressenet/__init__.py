"""ressenet: ResNet, SE-ResNet and Res-SE-Net for CIFAR-10/100 (Varshaneya et al., arXiv:1902.06066).

    import ressenet
    model = ressenet.create_model("res_se_net20", pretrained=True).eval()  # weights this project trained
    preprocess = ressenet.transforms(model)  # an RGB 32x32 image -> the normalised tensor the weights expect
    model = ressenet.create_model("res_se_net56", num_classes=100)
    trained = ressenet.load_pretrained("res_se_net56.safetensors")  # a file `ressenet export` wrote
"""
from ressenet.models import create_model, list_models, load_pretrained
from ressenet.pretrained import Weights, get_weights, list_pretrained, transforms

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_pretrained", "list_pretrained", "get_weights", "transforms",
           "Weights", "__version__"]
