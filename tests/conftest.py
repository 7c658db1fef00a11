import os

os.environ["HF_HUB_OFFLINE"] = "1"  # default tests never reach a hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
