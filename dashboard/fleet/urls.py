# Placeholder until the pages land (owned by the pages work).
urlpatterns: list = []
