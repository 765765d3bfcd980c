"""HTTP API and live map dashboard of ``yujing serve`` (:func:`.app.create_app`)."""
