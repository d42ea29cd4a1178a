import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never reach for a hub in tests
