"""``leafseg serve``: a local web page to try a model on an image.

    models.py   the models a page offers (exported checkpoints, training-free methods), loaded once
    handlers.py what the page's buttons do, in plain Python: parse class names, segment, render the table
    page.py     the Gradio page around them, and starting and stopping its server

Only ``page.py`` imports Gradio, and only ``leafseg serve`` imports ``page.py``: the rest of leafseg (and
``leafseg --help``) never pays for the web extra.
"""
