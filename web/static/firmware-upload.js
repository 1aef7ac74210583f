// Progress while a firmware bundle uploads: the form is sent with XMLHttpRequest so its
// upload events can drive the bar. Without JavaScript the form posts as usual; either way
// the server answers with the verification's progress page.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("upload-form");
  var bar = document.getElementById("upload-progress");
  var status = document.getElementById("upload-status");
  if (!form || !bar || !status || !window.XMLHttpRequest || !window.FormData) {
    return;
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    bar.hidden = false;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) {
        bar.value = Math.floor((e.loaded * 100) / e.total);
        status.textContent = "Uploading: " + e.loaded + " of " + e.total + " bytes";
      }
    });
    xhr.upload.addEventListener("load", function () {
      status.textContent = "Uploaded; the appliance is receiving it.";
    });
    xhr.addEventListener("load", function () {
      // Accepted: the server redirected to the verification's progress page.
      if (xhr.responseURL && xhr.responseURL.indexOf("/firmware/uploads/") !== -1) {
        window.location.assign(xhr.responseURL);
        return;
      }
      // Refused before verifying: show the page the server rendered, reason by the field.
      var page = new DOMParser().parseFromString(xhr.responseText, "text/html");
      var main = page.querySelector("main");
      if (main) {
        document.querySelector("main").replaceWith(main);
      } else {
        status.textContent = "The appliance answered " + xhr.status + ".";
        button.disabled = false;
      }
    });
    xhr.addEventListener("error", function () {
      status.textContent = "The upload failed: the connection broke.";
      button.disabled = false;
    });
    xhr.send(new FormData(form));
  });
});
