"""The HTTP API over the one `Engine`: `create_app()` builds it (see main.py); one router module per resource.

    uvicorn engine.api.main:create_app --factory --host 0.0.0.0 --port 8000
"""
