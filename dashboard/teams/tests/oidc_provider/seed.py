"""``python -m dashboard.teams.tests.oidc_provider.seed USER PASSWORD EMAIL GROUPS CLIENT_ID SECRET REDIRECT_URI``:
the provider's user (in comma-separated Django groups) and the dashboard's confidential client."""

import sys

import django


def main(username, password, email, groups, client_id, secret, redirect_uri):
    django.setup()
    from django.contrib.auth.models import Group, User
    from oauth2_provider.models import Application

    user = User.objects.create_user(username, email=email, password=password, first_name="Rita", last_name="Search")
    for name in filter(None, groups.split(",")):
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    Application.objects.create(
        name="hwdash",
        client_id=client_id,
        client_secret=secret,  # hashed on save; the dashboard sends it in plain
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=redirect_uri,
        algorithm=Application.RS256_ALGORITHM,
        skip_authorization=False,  # the user sees the consent page
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
