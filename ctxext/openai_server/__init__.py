"""``ctxext serve``: an OpenAI-compatible HTTP server (FastAPI on uvicorn) for one extended model.

``protocol`` holds the request bodies and the refusals the API answers with, ``engine`` the model that generates
for one request at a time, ``app`` the routes, ``launch`` the checks, the model load and the server's run.
"""
