//! The route table as data as well as a router: every path registered here is listed by
//! [`Routes::paths`], so tests generated from it (the permission matrix, the cross-tenant
//! sweep, the OpenAPI check) cover a new route the moment it is added, or fail.

use axum::Router;
use axum::routing::MethodRouter;

use super::AppState;

/// A router that remembers its paths.
#[derive(Default)]
pub struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    pub fn new() -> Routes {
        Routes::default()
    }

    pub fn route(mut self, path: &'static str, methods: MethodRouter<AppState>) -> Routes {
        self.router = self.router.route(path, methods);
        self.paths.push(path);
        self
    }

    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// Every registered path pattern, e.g. `/api/v1/documents/{id}`.
    pub fn paths(&self) -> &[&'static str] {
        &self.paths
    }

    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}
