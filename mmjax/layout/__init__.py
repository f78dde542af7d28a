"""Pure layout math shared by the data pipeline and the models: AnyRes geometry, token counts, token maps.

It sits below both `mmjax.data` and `mmjax.models` (each imports it; it imports neither), so the pipeline and
the model compute an image's token count from the same function and the package graph stays a DAG.
"""
