"""``samexport serve``: SAM as an HTTP service (FastAPI + uvicorn; extra ``serve``).

A face (see DESIGN.md): it uses the runtime, the mask generator and image I/O; nothing in
samexport imports it except the command line. :class:`~samexport.serve.service.SegmentService`
holds the model, the embedding cache and the prompt batcher; :func:`~samexport.serve.app.create_app`
puts the HTTP API and the page over it.
"""
