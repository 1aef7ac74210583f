//! What the portal's forms share: the form that carries only its CSRF token, and the
//! problems a refused form is shown again with.

use actix_web::http::StatusCode;

use crate::error::WebError;

/// A form that carries nothing but its CSRF token.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Why a submitted form was refused: each problem beside its field, anything else above
/// the form. Built from the core library's refusals; any other error is an error page.
#[derive(Debug, Clone, Default)]
pub struct Problems {
    fields: Vec<(String, String)>,
    general: Option<String>,
}

impl Problems {
    pub fn of(err: appliance::Error) -> Result<Problems, WebError> {
        match err {
            appliance::Error::Invalid { field, problem } => Ok(Problems {
                fields: vec![(field.to_owned(), problem)],
                general: None,
            }),
            appliance::Error::Conflict(problem) => Ok(Problems::general(problem)),
            other => Err(other.into()),
        }
    }

    pub fn general(problem: impl Into<String>) -> Problems {
        Problems {
            fields: Vec::new(),
            general: Some(problem.into()),
        }
    }

    /// The problem with `name`, shown beside that field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, problem)| problem.as_str())
    }

    /// Problems not tied to a field the form shows (in `shown`), for the top of the form.
    pub fn other(&self, shown: &[&str]) -> Option<String> {
        let unshown = self
            .fields
            .iter()
            .filter(|(field, _)| !shown.contains(&field.as_str()))
            .map(|(field, problem)| format!("{field}: {problem}"));
        let all: Vec<String> = self.general.iter().cloned().chain(unshown).collect();
        (!all.is_empty()).then(|| all.join("; "))
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.general.is_none()
    }

    /// 422 for a form shown again with its problems, else 200.
    pub fn status(&self) -> StatusCode {
        if self.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}
